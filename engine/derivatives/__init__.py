"""The derivatives users call: `Gradient`, `Jacobian` and the one-shot functions."""
