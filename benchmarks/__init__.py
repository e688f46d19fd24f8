"""Benchmarks for mmserve; ``python benchmarks/serving.py --help`` runs the serving benchmark."""
