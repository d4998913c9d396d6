"""repair layer (see docs/ARCHITECTURE.md)."""
