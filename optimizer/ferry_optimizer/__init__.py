"""Ferry's model optimizer: convert, optimize, quantize, prune, distill and gate a model.

Runs as the optimization Job and as the local `ferry-optimize` CLI. Never imports kopf.
"""

__version__ = "0.1.0"
