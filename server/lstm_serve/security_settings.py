"""The security groups of the settings (:class:`lstm_serve.settings.Settings`): TLS and
mTLS on the gRPC port, and authentication with per-model authorization. Each field is
set by a flag or an ``LSTM_SERVE_TLS__*`` / ``LSTM_SERVE_AUTH__*`` variable, as every
setting is."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TlsSettings(BaseModel):
    """TLS and mTLS on the gRPC port. Off (plaintext) unless both files are given."""

    cert_file: str = ""
    """PEM certificate chain the server presents (leaf first). With ``key_file``, the
    gRPC port speaks TLS only. Reloaded when the file changes."""

    key_file: str = ""
    """PEM private key (unencrypted) of ``cert_file``. Reloaded when the file changes."""

    client_ca_file: str = ""
    """PEM CA certificates for mTLS: every connection must present a client certificate
    they signed, for every method (health and reflection included). Empty: no client
    certificate asked for. Reloaded when the file changes."""

    reload_interval_s: float = Field(5.0, gt=0)
    """How often the TLS files, the API keys file and the JWKS file are checked for
    changes (read and hashed off the event loop). A change is in use for new
    connections and calls within this time."""

    @property
    def enabled(self) -> bool:
        """True when the gRPC port speaks TLS."""
        return bool(self.cert_file and self.key_file)


class AuthSettings(BaseModel):
    """Authentication and per-model authorization. Off unless a keys file or a JWKS
    file is given; then every call needs a credential, except to the open services."""

    keys_file: str = ""
    """JSON file of API key hashes and mTLS identities with their models
    (docs/security.md). Reloaded when it changes."""

    jwks_file: str = ""
    """JWKS file (``{"keys": [...]}``, public keys with a ``kid``) that JWT signatures
    are checked against. Needs ``issuer`` and ``audience``. Reloaded when it changes."""

    issuer: str = ""
    """The ``iss`` every JWT must carry."""

    audience: str = ""
    """The ``aud`` every JWT must carry (one of, when it is a list)."""

    leeway_s: float = Field(30.0, ge=0, le=300)
    """Clock skew allowed when checking a JWT's ``exp`` and ``nbf``."""

    open_health: bool = True
    """Serve ``grpc.health.v1`` without a credential (mTLS still applies: it is the
    handshake). False: health calls need a credential like any other."""

    open_reflection: bool = True
    """Serve server reflection without a credential. False: it needs one."""

    @property
    def enabled(self) -> bool:
        """True when calls need a credential."""
        return bool(self.keys_file or self.jwks_file)
