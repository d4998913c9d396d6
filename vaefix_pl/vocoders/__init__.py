"""vocoders layer (see docs/ARCHITECTURE.md)."""
