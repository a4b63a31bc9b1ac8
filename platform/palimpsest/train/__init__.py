"""The training loop and what it runs on: sessions, backends, methods, checkpoints, FLOP counting."""
