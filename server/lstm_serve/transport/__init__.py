"""gRPC transport: converters, the servicer, the error interceptor, the server."""
