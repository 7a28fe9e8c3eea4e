"""Degradation and image-quality metrics with SR-paper conventions; knows nothing of models."""
