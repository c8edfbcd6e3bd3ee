"""gvu: Learning to Generate via Understanding."""

__version__ = "0.1.0"
