"""pipeline layer: a run's job, writer and plain single-device loop, without Lightning (see docs/ARCHITECTURE.md)."""
