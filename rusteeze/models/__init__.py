"""Model architectures: the registry and the Llama-family decoder."""
