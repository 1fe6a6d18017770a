"""Optional OpenID Connect sign-in (hospitals running Keycloak or another OIDC provider).

When ``RDX_OIDC_ISSUER`` is set, a bearer token issued by that provider is accepted wherever our
own access token is: an ID token or a JWT access token signed with one of the provider's keys
(JWKS, RFC 7517, from ``RDX_OIDC_JWKS_FILE`` or ``RDX_OIDC_JWKS_URL``), algorithm RS256 (or those
listed in ``RDX_OIDC_ALGORITHMS``), ``iss`` equal to the issuer, ``aud`` containing
``RDX_OIDC_AUDIENCE`` (OIDC Core §3.1.3.7), not expired. The claim ``RDX_OIDC_USERNAME_CLAIM``
(default ``preferred_username``) names the local user; role, institution and pools always come
from our own user row — nothing in a foreign token is trusted for scoping — and a disabled local
user is refused like any other.

A URL's key set is cached for ``RDX_OIDC_JWKS_CACHE_SECONDS`` and fetched again at once when a
token names a key id not in it (the provider rotated its keys).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from remote_dx.core.clock import utcnow
from remote_dx.core.settings import Settings


class OIDCError(Exception):
    """The OIDC token is not acceptable; ``str(exc)`` is shown to the client."""


@dataclass
class OIDCVerifier:
    issuer: str
    audience: str
    algorithms: list[str]
    username_claim: str
    jwks_file: str | None = None
    jwks_url: str | None = None
    cache_seconds: float = 300.0
    leeway_seconds: int = 30
    _keys: dict[str, Any] = field(default_factory=dict)
    _loaded_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claims_token(self, token: str) -> bool:
        """Whether ``token`` is this provider's (by its unverified ``iss``), not one of ours."""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return False
        return unverified.get("iss") == self.issuer

    def _load(self) -> dict[str, Any]:
        if self.jwks_file:
            with open(self.jwks_file, encoding="utf-8") as handle:
                data = json.load(handle)
        elif self.jwks_url:
            with urllib.request.urlopen(self.jwks_url, timeout=5) as response:
                data = json.load(response)
        else:
            raise OIDCError("no JWKS configured (RDX_OIDC_JWKS_FILE or RDX_OIDC_JWKS_URL)")
        keys: dict[str, Any] = {}
        for entry in jwt.PyJWKSet.from_dict(data).keys:
            keys[entry.key_id or ""] = entry.key
        return keys

    def _key(self, kid: str | None, *, refresh: bool = False) -> Any:
        with self._lock:
            stale = time.monotonic() - self._loaded_at > self.cache_seconds
            if refresh or stale or not self._keys:
                try:
                    self._keys = self._load()
                except (OSError, ValueError, jwt.PyJWKError) as exc:
                    raise OIDCError(f"cannot read the provider's keys: {exc}") from exc
                self._loaded_at = time.monotonic()
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
            return self._keys.get(kid or "")

    def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise OIDCError(str(exc)) from exc
        if header.get("alg") not in self.algorithms:
            raise OIDCError(f"algorithm {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        key = self._key(kid)
        if key is None:
            key = self._key(kid, refresh=True)  # rotated keys: look once more
        if key is None:
            raise OIDCError(f"unknown signing key {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud"], "verify_exp": False},
            )
        except jwt.InvalidTokenError as exc:
            raise OIDCError(str(exc)) from exc
        # Expiry on the project's clock (as for our own tokens), with a little leeway for skew.
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        if (expires - utcnow()).total_seconds() < -self.leeway_seconds:
            raise OIDCError("token has expired; sign in again")
        return claims

    def username_of(self, token: str) -> str:
        claims = self.verify(token)
        username = claims.get(self.username_claim)
        if not isinstance(username, str) or not username:
            raise OIDCError(f"the token has no {self.username_claim!r} claim")
        return username


def oidc_verifier(settings: Settings) -> OIDCVerifier | None:
    if not settings.oidc_issuer:
        return None
    return OIDCVerifier(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        algorithms=[a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()],
        username_claim=settings.oidc_username_claim,
        jwks_file=str(settings.oidc_jwks_file) if settings.oidc_jwks_file else None,
        jwks_url=settings.oidc_jwks_url or None,
        cache_seconds=settings.oidc_jwks_cache_seconds,
    )
