"""Gymnasium memory environments (numpy only)."""
