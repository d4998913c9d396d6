"""diagnose layer (see docs/ARCHITECTURE.md)."""
