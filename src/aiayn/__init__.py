"""aiayn: the Transformer of "Attention Is All You Need", built from its parts."""

from aiayn.config import ModelConfig

__version__ = "0.1.0"
__all__ = ["ModelConfig", "__version__"]
