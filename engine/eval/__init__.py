"""Evaluation: metrics, the shifted-prior protocol, and the pseudo-labelling pass."""
