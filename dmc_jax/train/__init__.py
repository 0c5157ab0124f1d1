"""Training steps (PURE, in ``step.py``) and, later, the shells that drive them."""
