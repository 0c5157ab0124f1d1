"""Evaluation: jit roll-outs for pure envs, vector-env loops for gymnasium, coherency."""
