"""lightning layer (see docs/ARCHITECTURE.md)."""
