"""Palimpsest: research platform for memory in learning systems, on Ray."""

__version__ = "0.1.0"
