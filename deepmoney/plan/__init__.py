"""Capacity planning: memory per GPU, fit, speed and serving parallelism from a model's shape (docs/capacity.md)."""
