"""Datasets: annotation readers, the `Records` type, transforms and grain pipelines."""
