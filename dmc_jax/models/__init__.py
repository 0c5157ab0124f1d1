"""Diffusion controllers (Diffuser, Decision Diffuser, Diffusion Policy) and their sampler choice."""
