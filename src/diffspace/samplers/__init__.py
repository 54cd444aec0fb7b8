"""Samplers: grids, ODE and SDE solvers over the Denoiser contract."""
