"""Offline critics (IQL) and action selection over sampled candidates."""
