"""Reward alignment of pretrained DMCs: RL (REINFORCE / PPO / Q-gradient), DPO, SFT, cascade.

This milestone holds the pure losses; the update functions, the sequential scheduler and the
data-parallel loops build on them (issue #4).
"""
