"""The hub's ECG upload endpoint as the uploader sees it, and what each answer means.

``POST {hub}/api/v1/ecg`` (multipart: one or more ``files`` parts making one ECG, optional form
fields ``patient_id``, ``patient_name``, ``patient_sex``, ``patient_birth_date``, ``priority``),
authenticated by a device key (``X-Device-Key``) or a technician's bearer token (OAuth2 password
grant, RFC 6749 §4.3, at ``/api/v1/auth/token``). Every request carries
``Idempotency-Key: <upload key>`` so that a hub honouring it stores a repeated upload once.

Answers are sorted into four outcomes (RFC 9110 §15 status semantics):

* 2xx with a ``study_uid`` → ``Delivered``;
* 401 / 403 (after one fresh login), 404 / 405 (no such endpoint: wrong ``--hub``), or a 2xx
  that is not the hub's JSON → ``HubRefused`` raised: a configuration error, retrying is useless;
* 408, 409 (a concurrent request with the same key), 425, 429, 5xx, connection errors and
  timeouts → ``Unavailable`` (retry later, honouring ``Retry-After``);
* any other 4xx → ``Rejected`` with the hub's ``detail``: the file is bad, never retried.
"""

from __future__ import annotations

import contextlib
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_MIME = {
    ".dcm": "application/dicom",
    ".dicom": "application/dicom",
    ".xml": "application/xml",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".hea": "text/plain",
}


class HubRefused(RuntimeError):
    """The hub refuses us as configured (credentials, role, URL): stop and tell the user."""


@dataclass(frozen=True)
class Delivered:
    study_uid: str | None
    answer: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    status: int
    detail: str


@dataclass(frozen=True)
class Unavailable:
    reason: str
    retry_after: float | None = None


Outcome = Delivered | Rejected | Unavailable


def _detail(response: httpx.Response) -> str:
    """The hub's ``{"detail": ...}`` message (FastAPI's validation lists flattened)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        messages = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                messages.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                messages.append(str(item))
        detail = "; ".join(messages)
    if detail:
        return str(detail)
    text = response.text.strip()
    return text[:300] if text else response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from our hub; the backoff decides


class HubClient:
    """Upload ECGs to one hub; logs in lazily and again once when a token has expired."""

    def __init__(
        self,
        hub: str,
        *,
        device_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.hub = hub.rstrip("/")
        self._device_key = device_key
        self._username = username
        self._password = password
        self._token: str | None = None
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            headers={"User-Agent": "remote-dx-upload-ecg/1"},
        )

    def close(self) -> None:
        self._http.close()

    def _login(self) -> str:
        url = f"{self.hub}/api/v1/auth/token"
        response = self._http.post(
            url, data={"username": self._username or "", "password": self._password or ""}
        )
        if response.status_code in (400, 401, 403):
            raise HubRefused(
                f"the hub refused the login of {self._username!r} "
                f"({response.status_code}: {_detail(response)}); check --username/--password"
            )
        if response.status_code in (404, 405):
            raise HubRefused(f"no login endpoint at {url} ({response.status_code}); check --hub")
        response.raise_for_status()
        try:
            return str(response.json()["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise HubRefused(f"{url} did not answer a token; is --hub a remote_dx hub?") from exc

    def _auth_headers(self) -> dict[str, str]:
        if self._device_key:
            return {"X-Device-Key": self._device_key}
        if self._username:
            if self._token is None:
                self._token = self._login()
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def upload(
        self, parts: Sequence[tuple[str, Path]], fields: dict[str, str], key: str
    ) -> Outcome:
        """Send one ECG; never raises for the network or the file, only HubRefused."""
        try:
            response = self._post(parts, fields, key)
            if response.status_code == 401 and self._username and not self._device_key:
                self._token = None  # an expired token: log in again, once
                response = self._post(parts, fields, key)
        except httpx.TransportError as exc:
            return Unavailable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except httpx.HTTPStatusError as exc:  # from the login: the hub is there but failing
            return Unavailable(f"login answered {exc.response.status_code}")
        return self._classify(response)

    def _post(
        self, parts: Sequence[tuple[str, Path]], fields: dict[str, str], key: str
    ) -> httpx.Response:
        headers = {"Idempotency-Key": key, **self._auth_headers()}
        with contextlib.ExitStack() as stack:
            files = [
                (
                    "files",
                    (
                        name,
                        stack.enter_context(path.open("rb")),
                        _MIME.get(path.suffix.lower())
                        or mimetypes.guess_type(name)[0]
                        or "application/octet-stream",
                    ),
                )
                for name, path in parts
            ]
            return self._http.post(
                f"{self.hub}/api/v1/ecg", files=files, data=fields, headers=headers
            )

    def _classify(self, response: httpx.Response) -> Outcome:
        status = response.status_code
        url = f"{self.hub}/api/v1/ecg"
        if 200 <= status < 300:
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict) or "study_uid" not in answer:
                raise HubRefused(
                    f"{url} answered {status} without a study_uid; is --hub a remote_dx hub?"
                )
            return Delivered(answer.get("study_uid"), answer)
        if status in (401, 403):
            how = "device key" if self._device_key else "credentials"
            raise HubRefused(
                f"the hub refused our {how} ({status}: {_detail(response)}); "
                + (
                    "check --device-key"
                    if self._device_key
                    else "give --device-key or --username/--password of a technician"
                )
            )
        if status in (404, 405):
            raise HubRefused(f"no ECG upload endpoint at {url} ({status}); check --hub")
        if status >= 500 or status in RETRYABLE_4XX:
            return Unavailable(
                f"hub answered {status}: {_detail(response)}", _retry_after(response)
            )
        return Rejected(status, _detail(response))
