"""The engine: sequences, block manager, scheduler, runner, sampler."""
