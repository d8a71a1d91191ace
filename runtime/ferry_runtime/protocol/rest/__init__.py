"""The v2 REST transport: a small HTTP/1.1 server on uvloop + httptools, JSON and binary tensor data."""
