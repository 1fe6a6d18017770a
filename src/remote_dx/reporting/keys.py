"""The hub's report-signing key (Ed25519, RFC 8032) and the canonical form of what it signs.

Where the key comes from:

- ``RDX_REPORT_SIGNING_KEY`` (setting ``report_signing_key``): a PEM private key, or base64 of
  a PEM, a PKCS#8 DER or a raw 32-byte seed. Scale-out deployments give every API process the
  same key this way.
- otherwise ``<data_dir>/report_signing_key.pem`` (mode 0600), made on first use. Creation uses
  ``O_EXCL`` so processes starting together agree on one key.

``key_id`` is the first 16 hex digits of SHA-256 over the raw 32-byte public key; every signed
version records it, so a rotated key shows as "signed with another key" instead of "tampered".

The signed bytes are the canonical JSON of the payload: keys sorted, UTF-8 (no ``\\u`` escapes),
no whitespace — the same idea as RFC 8785 for the plain strings, integers and floats a report holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from remote_dx.core.settings import Settings

KEY_FILE = "report_signing_key.pem"
ENV_NAME = "RDX_REPORT_SIGNING_KEY"
ALGORITHM = "Ed25519"


class SigningKeyError(ValueError):
    """The configured signing key cannot be read."""


@dataclass(frozen=True)
class HubKey:
    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey
    key_id: str

    def sign(self, payload: dict[str, Any]) -> str:
        """Base64 (standard alphabet) of the Ed25519 signature over ``canonical_json(payload)``."""
        return base64.b64encode(self.private_key.sign(canonical_json(payload))).decode("ascii")

    def verify(self, payload: dict[str, Any], signature: str | None) -> bool:
        return verify_signature(self.public_key, payload, signature)

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")


def canonical_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(
        payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify_signature(
    public_key: Ed25519PublicKey, payload: dict[str, Any], signature: str | None
) -> bool:
    if not signature:
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, canonical_json(payload))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def _from_pem_or_der(data: bytes) -> Ed25519PrivateKey:
    loader = (
        serialization.load_pem_private_key
        if data.lstrip().startswith(b"-----BEGIN")
        else serialization.load_der_private_key
    )
    key = loader(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the report signing key is a {type(key).__name__}, not Ed25519")
    return key


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """A PEM, or base64 of a PEM / PKCS#8 DER / raw 32-byte seed."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            return _from_pem_or_der(text.encode("ascii"))
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return Ed25519PrivateKey.from_private_bytes(raw)
        return _from_pem_or_der(raw)
    except SigningKeyError:
        raise
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SigningKeyError(
            f"{ENV_NAME} is not a usable Ed25519 private key (PEM, or base64 of PEM/DER/seed): "
            f"{exc}"
        ) from exc


def _hub_key(private_key: Ed25519PrivateKey) -> HubKey:
    public_key = private_key.public_key()
    return HubKey(private_key, public_key, key_id_of(public_key))


def _load_or_create_file(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first; use theirs
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
    data = path.read_bytes()
    if not data.strip():
        raise SigningKeyError(f"{path} is empty; remove it to make a new key")
    return _from_pem_or_der(data)


_cache: dict[tuple[str, str], HubKey] = {}
_lock = threading.Lock()


def load_signing_key(settings: Settings) -> HubKey:
    """The hub's key for these settings (cached per configured source)."""
    configured = (getattr(settings, "report_signing_key", "") or "").strip()
    configured = configured or os.environ.get(ENV_NAME, "").strip()
    path = settings.data_dir / KEY_FILE
    cache_key = (configured, "" if configured else str(path.resolve()))
    with _lock:
        key = _cache.get(cache_key)
        if key is None:
            private = parse_private_key(configured) if configured else _load_or_create_file(path)
            key = _cache[cache_key] = _hub_key(private)
        return key


def reset_key_cache() -> None:
    with _lock:
        _cache.clear()
