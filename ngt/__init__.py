"""ngt: a screening suite for attention variants around the Newton Gravity Transformer."""

__version__ = "0.1.0"
