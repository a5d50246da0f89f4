"""Python client for lstm-serve: unary Predict, streaming, health and metadata."""

from lstm_client.client import (
    LstmClient,
    PredictResult,
    Security,
    StatusError,
    StreamCall,
    StreamProtocolError,
    StreamResult,
)

__all__ = [
    "LstmClient", "PredictResult", "Security", "StatusError", "StreamCall", "StreamProtocolError", "StreamResult",
]
