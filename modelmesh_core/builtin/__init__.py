"""Built-in plugins: the providers, strategies, stages and stores that ship with the core."""
