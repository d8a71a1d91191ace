"""The v2 gRPC transport (`inference.GRPCInferenceService`): unary gRPC over HTTP/2 on the event loop."""
