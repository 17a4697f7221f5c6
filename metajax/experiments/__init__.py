"""Importable bodies of the `experiments/` scripts: config in, files out."""
