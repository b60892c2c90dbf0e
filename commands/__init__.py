"""The rusteeze command-line interface (installed as rusteeze.commands)."""
