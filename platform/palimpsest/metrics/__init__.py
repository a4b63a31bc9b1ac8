"""Pure metric functions: numbers in, numbers out (no ray, no spec, no files)."""
