"""Memory agents for the memory-rewriting RL benchmark (RLlib's new API stack)."""
