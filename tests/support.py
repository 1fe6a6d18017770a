"""Helpers shared by tests and benches (not fixtures): ports, server probes, paths, test objects."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from remote_dx.core.settings import Settings

if TYPE_CHECKING:
    from remote_dx.ecg.model import ECG

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_STUDIES = ROOT / "sample_studies"
DEMO_NETWORK = SAMPLE_STUDIES / "demo_network.yaml"


def demo_hub_on(settings: Settings, database_url: str) -> Settings:
    """``settings`` on another database (a test's own PostgreSQL one), migrated, with the demo
    network (institutions, devices, users with password "demo")."""
    from remote_dx.core.db import session_scope
    from remote_dx.core.migrate import upgrade
    from remote_dx.core.network import apply_network, load_network_file

    hub = settings.model_copy(update={"database_url": database_url})
    upgrade(hub)
    with session_scope(hub) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=True)
    return hub


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (tests never assume 11112 or 8000 are free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


def multiframe_cine(syntax: str, pixel_data: bytes, frames: int) -> bytes:
    """A Part 10 X-ray angiography cine of ``frames`` 512×512 12-bit frames: ``pixel_data`` as
    given, native or (for an encapsulated ``syntax``) already encapsulated."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic: a cine
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "XA"
    ds.PatientName = "Ranged^Frames"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 512, 512, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.PixelData = pixel_data
    if UID(syntax).is_encapsulated:
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == "1.2.840.10008.1.2")
    return out.getvalue()


LUDB = SHARED_DATA / "ecg" / "ludb" / "data"
_LUDB_NAMES = {"i": "I", "ii": "II", "iii": "III", "avr": "aVR", "avl": "aVL", "avf": "aVF"}


def ludb_ecg(record: int) -> ECG:
    """One LUDB record (Kalyakulina et al., IEEE Access 2020) as the internal ECG model; the
    calling test is skipped where wfdb or the data are missing."""
    import numpy as np
    import pytest

    from remote_dx.ecg.model import ECG

    wfdb = pytest.importorskip("wfdb")
    if not (LUDB / f"{record}.hea").exists():
        pytest.skip(f"LUDB not found at {LUDB}")
    rec = wfdb.rdrecord(str(LUDB / str(record)))
    leads = {
        _LUDB_NAMES.get(n, n.upper()): rec.p_signal[:, i].astype(np.float32)
        for i, n in enumerate(rec.sig_name)
    }
    return ECG(leads=leads, sampling_rate=float(rec.fs))
