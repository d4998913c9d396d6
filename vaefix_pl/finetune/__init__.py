"""finetune layer (see docs/ARCHITECTURE.md)."""
