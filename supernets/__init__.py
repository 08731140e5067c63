"""Weight-sharing supernets: elastic ops, search spaces, families, training and extraction."""

from supernets.space import Arch, Dimension, SearchSpace

__all__ = ["Arch", "Dimension", "SearchSpace"]
