"""edgec: take a neural network to integer-only edge artifacts and prove they work."""

__version__ = "0.1.0"
