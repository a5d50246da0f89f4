"""gRPC transport: one folder per API (``lstmserve_v1/``), shared tensor conversion,
the status mapping and the interceptor that serves every API on the port."""
