"""Small helpers shared by the entry points (files, run metadata)."""
