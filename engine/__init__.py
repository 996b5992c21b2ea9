"""Shared building blocks of the training engine."""
