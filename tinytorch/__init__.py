"""tinytorch: a transformer built from scratch in NumPy. Every public name is importable from here."""
__version__ = "0.1.0"

from .tensor import *  # noqa: F401,F403  Tensor, Function, no_grad, gradcheck, softmax, gelu, ...
