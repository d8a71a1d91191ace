"""Transports of the Open Inference Protocol v2: `rest` (HTTP/1.1) and `grpc`, over one data plane."""
