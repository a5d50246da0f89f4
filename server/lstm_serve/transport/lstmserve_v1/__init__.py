"""The native API, ``lstmserve.v1.Inference``: its converter and servicer."""

from lstm_serve.transport.api import ApiService
from lstm_serve.transport.lstmserve_v1.servicer import SERVICE_NAME, add_inference_service

API = ApiService(SERVICE_NAME, add_inference_service)
"""What the server registers, reports in health and reflection, and meters."""

__all__ = ["API"]
