"""Lightning callbacks of the method: sample grids of the target DDPM (later: PTL)."""
