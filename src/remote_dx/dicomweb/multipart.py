"""``multipart/related`` bodies (RFC 2387) and media-type negotiation for DICOMweb.

PS3.18 §8.6 (payloads) and §8.7.3 (acceptable media types, the ``transfer-syntax`` parameter).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from remote_dx.core.errors import ServiceError


class NotAcceptable(ServiceError):
    """No representation the client accepts can be produced (HTTP 406, PS3.18 §8.7.4)."""

    status_code = 406


class BadRequest(ServiceError):
    status_code = 400


class UnsupportedMediaType(ServiceError):
    status_code = 415


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header (or a Content-Type): type/subtype, parameters, quality."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def is_multipart(self) -> bool:
        return self.type == "multipart/related"

    @property
    def part_type(self) -> str | None:
        """For ``multipart/related``: the ``type`` parameter (the media type of the parts)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        if self.type in ("*/*", media_type):
            return True
        major, _, minor = self.type.partition("/")
        return minor == "*" and media_type.split("/")[0] == major


_SPLIT_COMMA = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_SPLIT_SEMI = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')


def parse_media_type(text: str) -> MediaRange:
    parts = [p.strip() for p in _SPLIT_SEMI.split(text)]
    params: dict[str, str] = {}
    q = 1.0
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        else:
            params[name] = value
    return MediaRange(parts[0].lower(), params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The Accept header's media ranges, best first; an absent header accepts anything."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(p) for p in _SPLIT_COMMA.split(header) if p.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q) or [MediaRange("*/*")]


def new_boundary() -> str:
    return f"rdx-{secrets.token_hex(12)}"


def multipart_body(parts: Iterable[tuple[bytes, dict[str, str]]], boundary: str) -> Iterator[bytes]:
    """The body of a ``multipart/related`` message, one chunk per part (streamed)."""
    b = boundary.encode()
    for payload, headers in parts:
        head = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        yield b"--" + b + b"\r\n" + head + b"\r\n" + payload + b"\r\n"
    yield b"--" + b + b"--\r\n"


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]
    body: bytes

    def read(self) -> bytes:
        return self.body

    @property
    def content_type(self) -> MediaRange:
        return parse_media_type(self.headers.get("content-type", "application/octet-stream"))


def _delimiter(content_type: str | None) -> bytes:
    """The part delimiter (``--`` + boundary) of a ``multipart/related`` request body."""
    media = parse_media_type(content_type or "")
    if media.type != "multipart/related":
        raise UnsupportedMediaType(
            f'Content-Type must be multipart/related; type="application/dicom", not '
            f"{content_type or 'absent'}"
        )
    boundary = media.params.get("boundary")
    if not boundary:
        raise BadRequest("multipart/related without a boundary parameter")
    return b"--" + boundary.encode()


def parse_multipart(body: bytes, content_type: str | None) -> list[Part]:
    """Split a ``multipart/related`` request body into its parts (RFC 2046 §5.1.1).

    Raises :class:`UnsupportedMediaType` for another content type and :class:`BadRequest` when
    the body is not well-formed (no boundary, no closing delimiter, a part without headers).
    """
    delimiter = _delimiter(content_type)
    start = body.find(delimiter)
    if start < 0:
        raise BadRequest("malformed multipart body: the boundary never occurs")
    parts: list[Part] = []
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):
            break  # the close delimiter
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise BadRequest("malformed multipart body: truncated after a boundary")
        header_end = body.find(b"\r\n\r\n", line_end)
        if header_end < 0:
            raise BadRequest("malformed multipart body: a part has no header section")
        headers: dict[str, str] = {}
        for line in body[line_end + 2 : header_end].split(b"\r\n"):
            if not line:
                continue
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest(f"malformed multipart body: bad header line {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        content_start = header_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, content_start)
        if next_delimiter < 0:
            raise BadRequest("malformed multipart body: no closing boundary")
        parts.append(Part(headers, body[content_start:next_delimiter]))
        position = next_delimiter + 2 + len(delimiter)
    if not parts:
        raise BadRequest("the multipart body holds no parts")
    return parts


# -- request bodies spooled to a file (STOW-RS) ----------------------------------------------------

#: A part's header section larger than this is malformed (a DICOM part has one or two headers).
MAX_PART_HEADERS = 16 * 1024
_SCAN_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class SpooledPart:
    """One part of a spooled body: its headers and where its content lies in the spool file.

    The content is read only when the part is filed, so memory holds one part at a time,
    not the whole request.
    """

    headers: dict[str, str]
    start: int
    end: int
    file: BinaryIO = field(repr=False, compare=False)

    @property
    def content_type(self) -> MediaRange:
        return parse_media_type(self.headers.get("content-type", "application/octet-stream"))

    @property
    def size(self) -> int:
        return self.end - self.start

    def read(self) -> bytes:
        self.file.seek(self.start)
        return self.file.read(self.end - self.start)


@dataclass(frozen=True)
class SpooledBody:
    """The well-formed parts of a spooled body, in order, and — when the body went wrong after
    them (truncated, a part without headers) — what was wrong. Parts before the fault are whole
    (each ends at a delimiter), so they can be stored; nothing after it is guessed at."""

    parts: list[SpooledPart]
    error: str | None = None


def _find_all(file: BinaryIO, needle: bytes) -> list[int]:
    """Offsets of every occurrence of ``needle`` in ``file``, read a chunk at a time."""
    file.seek(0)
    found: list[int] = []
    carry = b""
    position = 0  # offset of the next chunk in the file
    keep = len(needle) - 1
    while chunk := file.read(_SCAN_CHUNK):
        buffer = carry + chunk
        base = position - len(carry)
        index = buffer.find(needle)
        while index >= 0:
            found.append(base + index)
            index = buffer.find(needle, index + len(needle))
        # A match cannot lie wholly inside the carried tail, so none is counted twice.
        carry = buffer[-keep:] if keep else b""
        position += len(chunk)
    return found


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


def split_spooled(file: BinaryIO, content_type: str | None) -> SpooledBody:
    """The parts of a spooled ``multipart/related`` body (RFC 2046 §5.1.1), read from ``file``.

    Raises :class:`UnsupportedMediaType` for another content type and :class:`BadRequest` when
    no part can be read at all; a fault after one or more whole parts is returned in
    :attr:`SpooledBody.error` with those parts.
    """
    delimiter = _delimiter(content_type)
    # Delimiters after the first are preceded by CRLF (which belongs to the delimiter); the first
    # may open the body or follow a preamble.
    starts = [p + 2 for p in _find_all(file, b"\r\n" + delimiter)]
    if _read_at(file, 0, len(delimiter)) == delimiter:
        starts.insert(0, 0)
    if not starts:
        raise BadRequest("malformed multipart body: the boundary never occurs")
    parts: list[SpooledPart] = []
    error: str | None = None
    for index, start in enumerate(starts):
        position = start + len(delimiter)
        if _read_at(file, position, 2) == b"--":
            break  # the close delimiter
        if index + 1 == len(starts):
            error = (
                f"malformed multipart body: truncated after {len(parts)} whole part(s) "
                "(no closing boundary)"
            )
            break
        end = starts[index + 1] - 2  # the CRLF before the next delimiter
        head = _read_at(file, position, min(end - position, MAX_PART_HEADERS))
        line_end = head.find(b"\r\n")
        header_end = head.find(b"\r\n\r\n", max(line_end, 0))
        if line_end < 0 or header_end < 0:
            error = f"malformed multipart body: part {index + 1} has no header section"
            break
        headers: dict[str, str] = {}
        for line in head[line_end + 2 : header_end].split(b"\r\n"):
            if not line:
                continue
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                error = f"malformed multipart body: bad header line {line[:60]!r}"
                break
            headers[name.strip().lower()] = value.strip()
        if error:
            break
        parts.append(SpooledPart(headers, position + header_end + 4, end, file))
    if not parts:
        raise BadRequest(error or "the multipart body holds no parts")
    return SpooledBody(parts, error)
