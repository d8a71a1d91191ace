"""Protobuf messages generated from ../grpc_predict_v2.proto by `python scripts/generate.py`; do not edit."""
