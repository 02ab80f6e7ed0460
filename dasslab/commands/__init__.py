"""The command-line entry points: each a thin app over the library (``dasslab-<name>``)."""
