"""TLS and mTLS for the gRPC port, with certificates that reload without a restart.

grpc asks a *certificate-configuration fetcher* for news before each new connection's
handshake. Ours never touches the disk: the files are read and checked off the event
loop by :class:`~lstm_serve.watch.WatchedFiles` (the server's reload task), and the
fetcher only compares a generation number and hands over the configuration already
built. Connections that are open keep the certificate they were made with; new ones
get the new one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lstm_serve.credentials import CredentialFileError
from lstm_serve.metrics import Metrics
from lstm_serve.security_settings import TlsSettings
from lstm_serve.watch import WatchedFiles

log = logging.getLogger(__name__)


def _check_pair(cert_pem: bytes, key_pem: bytes) -> None:
    """Refuse a certificate chain and key that do not parse or do not belong together."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CredentialFileError(f"certificate file: not PEM certificates ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialFileError(f"key file: not an unencrypted PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(encoding, public) != key.public_key().public_bytes(encoding, public):
        raise CredentialFileError("the key file's key does not match the certificate file's first certificate")


def _configuration(contents: list[bytes]) -> grpc.ServerCertificateConfiguration:
    cert_pem, key_pem, *client_ca = contents
    _check_pair(cert_pem, key_pem)
    if client_ca:
        try:
            x509.load_pem_x509_certificates(client_ca[0])
        except ValueError as exc:
            raise CredentialFileError(f"client CA file: not PEM certificates ({exc})") from None
    return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], client_ca[0] if client_ca else None)


class ServerTls:
    """The gRPC port's TLS credentials, kept current from the files."""

    def __init__(self, settings: TlsSettings, metrics: Metrics) -> None:
        paths = [Path(settings.cert_file), Path(settings.key_file)]
        if settings.client_ca_file:
            paths.append(Path(settings.client_ca_file))
        self.files = WatchedFiles("tls", paths, _configuration, metrics)
        self.mutual = bool(settings.client_ca_file)
        self._served = self.files.generation

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that take up a changed certificate at the next handshake;
        with a client CA, every connection must present a certificate it signed."""
        return grpc.dynamic_ssl_server_credentials(
            self.files.value, self._fetch, require_client_authentication=self.mutual
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's fetcher, run on its own thread before each handshake: None keeps the
        configuration in use. It only reads two attributes."""
        generation = self.files.generation
        if generation == self._served:
            return None
        self._served = generation
        return self.files.value


def peer_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The verified client certificate's subject CN and SANs; empty without mTLS."""
    properties = context.auth_context()
    names = [*properties.get("x509_common_name", []), *properties.get("x509_subject_alternative_name", [])]
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]
