"""From a config to finished runs: stages, the job plan, its execution (local, DDP, Slurm), results and tables."""
