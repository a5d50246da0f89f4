"""Real certificates and keys for the security tests, made with ``cryptography``: a CA,
server and client certificates it signs, API keys with their hashes, and JWTs signed
with a JWKS's keys."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lstm_serve.credentials import key_hash

SERVER_NAME = "lstm-serve.test"
"""The DNS name in every server certificate; clients check it with --tls-server-name."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Issued:
    """A certificate and its key, PEM."""

    cert: bytes
    key: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.crt`` and ``stem.key``; return their paths."""
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        return cert, key


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, name: str) -> None:
        self._key = _key()
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        """Write the CA certificate to ``path``."""
        path.write_bytes(self.pem)
        return path

    def issue(self, common_name: str, *, client: bool = False, dns: tuple[str, ...] = ()) -> Issued:
        """A leaf certificate for a server (``dns`` names, loopback IP) or a client."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        if not client:
            names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))

    def server(self) -> Issued:
        """A server certificate for :data:`SERVER_NAME` and 127.0.0.1."""
        return self.issue(SERVER_NAME, dns=(SERVER_NAME,))


def write_keys_file(path: Path, entries: list[dict[str, Any]]) -> Path:
    """Write an API keys file; an entry's ``key`` is replaced by its sha256."""
    keys = [
        {**{k: v for k, v in e.items() if k != "key"}, **({"sha256": key_hash(e["key"])} if "key" in e else {})}
        for e in entries
    ]
    path.write_text(json.dumps({"keys": keys}))
    return path


class JwtIssuer:
    """An EC key pair published in a JWKS under ``kid``, signing tokens."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self._key = _key()

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK."""
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        return {**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}

    def token(self, *, kid: str | None = None, expires_in: float = 300, **claims: Any) -> str:
        """A signed JWT with ``exp`` ``expires_in`` seconds from now and ``claims``."""
        payload = {"exp": int(time.time() + expires_in), "iat": int(time.time()), **claims}
        return jwt.encode(payload, self._key, algorithm="ES256", headers={"kid": kid or self.kid})


def write_jwks(path: Path, issuers: list[JwtIssuer]) -> Path:
    """Write a JWKS file with every issuer's public key."""
    path.write_text(json.dumps({"keys": [i.jwk() for i in issuers]}))
    return path
