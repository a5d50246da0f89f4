"""lstm-serve: serve recurrent sequence models over gRPC with per-session state."""

__version__ = "0.1.0"
