"""STOW-RS bodies are spooled to a file and parsed a part at a time (issue 5; PS3.18 §10.5):
a large upload is stored whole, and a truncated or malformed body answers 400 with the whole parts
before the fault stored and listed — nothing received is lost, also when the client goes away.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from remote_dx.api.routers import dicomweb as router
from remote_dx.dicomweb import multipart
from remote_dx.dicomweb.multipart import BadRequest, multipart_body, split_spooled
from tests.support import wait_until
from tests.test_dicomweb import Filed, archive  # noqa: F401 — the shared fixture
from tests.test_dicomweb_live import live, token  # noqa: F401 — the live app

BOUNDARY = "b0undary-stow"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _image(study_uid: str, side: int = 64) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientID = "P-STOW"
    ds.Rows = ds.Columns = side
    rng = np.random.default_rng(side)
    ds.PixelData = rng.integers(0, 4096, side * side, dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()


def _sop(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _body(parts: list[bytes]) -> bytes:
    return b"".join(
        multipart_body([(p, {"Content-Type": "application/dicom"}) for p in parts], BOUNDARY)
    )


def _headers(base: str) -> dict[str, str]:
    return {
        "Content-Type": CONTENT_TYPE,
        "Accept": "application/dicom+json",
        "Authorization": f"Bearer {token(base, 'tech_xiping')}",
    }


def _indexed(base: str, study_uid: str) -> set[str]:
    response = httpx.get(
        f"{base}/dicom-web/studies/{study_uid}/instances",
        headers={"Authorization": f"Bearer {token(base, 'tech_xiping')}"},
        timeout=30,
    )
    if response.status_code == 404:
        return set()
    assert response.status_code == 200, response.text
    return {item["00080018"]["Value"][0] for item in response.json()}


def _stored(response: httpx.Response) -> list[str]:
    refs = response.json().get("00081199", {}).get("Value", [])
    return [ref["00081155"]["Value"][0] for ref in refs]


def test_split_spooled_reads_parts_lazily_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scan chunks smaller than a delimiter: every delimiter straddles a chunk edge somewhere.
    monkeypatch.setattr(multipart, "_SCAN_CHUNK", 7)
    payloads = [b"first\r\n--b0undary-stoX", b"", bytes(range(256)) * 3]
    path = tmp_path / "body"
    path.write_bytes(b"preamble\r\n" + _body(payloads))
    with path.open("rb") as file:
        body = split_spooled(file, CONTENT_TYPE)
        assert body.error is None
        assert [p.read() for p in body.parts] == payloads
        assert all(p.content_type.type == "application/dicom" for p in body.parts)
    # Cut inside the last part: the whole parts before it, and the fault.
    path.write_bytes(_body(payloads)[:-40])
    with path.open("rb") as file:
        body = split_spooled(file, CONTENT_TYPE)
        assert [p.read() for p in body.parts] == payloads[:2]
        assert body.error is not None and "truncated after 2" in body.error
    # Nothing whole at all: a plain 400.
    path.write_bytes(_body(payloads)[:30])
    with path.open("rb") as file, pytest.raises(BadRequest):
        split_spooled(file, CONTENT_TYPE)


def test_large_stow_is_spooled_to_disk_and_stored_whole(
    live: str,  # noqa: F811
    settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A small in-memory share, so this body (~4 MB) goes to a file under the data directory.
    monkeypatch.setattr(router, "SPOOL_IN_MEMORY", 256 * 1024)
    spooled: list[bool] = []
    original = router._spool

    async def watched(request):  # type: ignore[no-untyped-def]
        file, disconnected = await original(request)
        spooled.append(bool(file._rolled))  # on disk, not in memory
        return file, disconnected

    monkeypatch.setattr(router, "_spool", watched)
    study_uid = generate_uid()
    parts = [_image(study_uid, side=512) for _ in range(8)]
    response = httpx.post(
        f"{live}/dicom-web/studies", content=_body(parts), headers=_headers(live), timeout=120
    )
    assert response.status_code == 200, response.text
    assert spooled == [True]
    assert sorted(_stored(response)) == sorted(_sop(p) for p in parts)
    assert _indexed(live, study_uid) == {_sop(p) for p in parts}
    # Byte for byte what was sent.
    first = parts[3]
    got = httpx.get(
        f"{live}/dicom-web/studies/{study_uid}/series/"
        f"{pydicom.dcmread(io.BytesIO(first)).SeriesInstanceUID}/instances/{_sop(first)}",
        headers={"Authorization": f"Bearer {token(live, 'tech_xiping')}"},
        timeout=60,
    )
    assert got.status_code == 200
    assert first in got.content
    assert not list((Path(settings.data_dir) / "tmp").iterdir())  # the spool file is gone


def test_truncated_or_malformed_body_keeps_the_whole_parts(live: str) -> None:  # noqa: F811
    study_uid = generate_uid()
    parts = [_image(study_uid) for _ in range(3)]
    body = _body(parts)
    truncated = body[: body.index(parts[2]) + 100]  # cut inside the third instance
    response = httpx.post(
        f"{live}/dicom-web/studies", content=truncated, headers=_headers(live), timeout=60
    )
    assert response.status_code == 400, response.text
    assert "truncated after 2 whole part(s)" in response.headers["warning"]
    assert "2 instance(s) before it were stored" in response.headers["warning"]
    assert sorted(_stored(response)) == sorted(_sop(p) for p in parts[:2])
    assert _indexed(live, study_uid) == {_sop(p) for p in parts[:2]}

    # A part with no header section after a good one: the good one is stored.
    other = generate_uid()
    good = _image(other)
    bad = (
        _body([good])[: -len(f"--{BOUNDARY}--\r\n")]
        + f"--{BOUNDARY}\r\nContent-Type: application/dicom".encode()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    response = httpx.post(f"{live}/dicom-web/studies", content=bad, headers=_headers(live))
    assert response.status_code == 400, response.text
    assert "no header section" in response.headers["warning"]
    assert _stored(response) == [_sop(good)]
    assert _indexed(live, other) == {_sop(good)}

    # Nothing whole: a plain 400 and nothing stored.
    response = httpx.post(
        f"{live}/dicom-web/studies", content=body[:60], headers=_headers(live), timeout=60
    )
    assert response.status_code == 400
    assert "detail" in response.json()


def test_client_gone_mid_body_loses_no_whole_part(live: str) -> None:  # noqa: F811
    study_uid = generate_uid()
    parts = [_image(study_uid, side=256) for _ in range(3)]
    body = _body(parts)
    sent = body[: body.index(parts[2]) + 1000]
    host, port = live.removeprefix("http://").split(":")
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: {host}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in _headers(live).items())
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + sent)
    # The two whole instances the client sent before it went away are filed.
    wait_until(
        lambda: _indexed(live, study_uid) == {_sop(p) for p in parts[:2]},
        timeout=30,
        message="the whole parts of an abandoned upload to be stored",
    )


def test_part_sizes_are_what_was_sent() -> None:
    payload = b"x" * 10
    data = _body([payload])
    file = io.BytesIO(data)
    (part,) = split_spooled(file, CONTENT_TYPE).parts
    assert part.size == len(payload) and part.read() == payload
