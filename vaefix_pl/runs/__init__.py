"""runs layer (see docs/ARCHITECTURE.md)."""
