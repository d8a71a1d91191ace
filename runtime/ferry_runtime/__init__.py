"""Ferry's serving runtime: ONNX Runtime behind the Open Inference Protocol v2 (REST and gRPC).

Also home of the storage initializer (`ferry-fetch`). Never imports tensorflow or kopf.
"""

__version__ = "0.1.0"
