"""The Open Inference Protocol (KServe v2 / Triton gRPC), ``inference.GRPCInferenceService``:
its converter and servicer over the same domain as the native API."""

from lstm_serve.transport.api import ApiService
from lstm_serve.transport.kserve_v2.servicer import SERVICE_NAME, add_kserve_v2_service

API = ApiService(SERVICE_NAME, add_kserve_v2_service)
"""What the server registers, reports in health and reflection, and meters."""

__all__ = ["API"]
