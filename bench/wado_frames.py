"""WADO-RS frame requests on a large multi-frame object: whole-object read vs ranged reads.

Usage (from the repository root)::

    .venv/bin/python bench/wado_frames.py                 # FileStore and SeaweedFS, 20 requests
    .venv/bin/python bench/wado_frames.py --stores file --requests 10

One 300-frame 512×512 16-bit XA cine (≈ 157 MB, Explicit VR Little Endian) and an encapsulated
cine of 300 opaque ≈ 0.5 MB fragments (as stored, no decode), with a Basic Offset Table and
without one (its layout then takes one pass over the items), are put in each store. For each, one
frame per request is asked through :func:`remote_dx.dicomweb.wado.stored_frames` as the frames
route does (``transfer-syntax=*``), in a fixed random order: "whole" forces the old path (the
object read whole for every request: objects over 64 MB are not kept by the object cache),
"ranged" is the new one (the first request finds and keeps the layout, the rest read one frame).
Prints the first request, then median / max of the rest in ms, and the bytes read per request.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import multiframe_cine

from bench.s3 import ACCESS_KEY, SECRET_KEY, SeaweedS3, weed_binary
from remote_dx.dicomweb import wado
from remote_dx.dicomweb.access import InstanceRef
from remote_dx.storage.file_store import FileStore
from remote_dx.storage.s3_store import S3Store

FRAMES = 300
AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


class Counting:
    """Counts the bytes a store hands out."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.bytes = 0

    def put(self, key: str, data: bytes, content_type: str = "application/dicom") -> None:
        self.inner.put(key, data, content_type)

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        self.bytes += len(data)
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = self.inner.get_range(key, offset, length)
        self.bytes += len(data)
        return data


def objects() -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(1)
    native = rng.integers(0, 4096, (FRAMES, 512, 512), dtype="<u2").tobytes()
    fragments = [rng.bytes(int(rng.integers(400_000, 600_000))) for _ in range(FRAMES)]
    return {
        "native": ("1.2.840.10008.1.2.1", multiframe_cine("1.2.840.10008.1.2.1", native, FRAMES)),
        "encapsulated": (
            str(JPEG2000Lossless),
            multiframe_cine(str(JPEG2000Lossless), encapsulate(fragments), FRAMES),
        ),
        "encaps-noBOT": (
            str(JPEG2000Lossless),
            multiframe_cine(str(JPEG2000Lossless), encapsulate(fragments, has_bot=False), FRAMES),
        ),
    }


def run(store: Counting, ref: InstanceRef, order: list[int], ranged: bool) -> str:
    wado.RANGED_MIN_BYTES = 64 * 1024 * 1024 if ranged else 1 << 62
    wado._layouts.forget(ref.object_key)
    plan = wado.frame_plan(AS_STORED, ref.transfer_syntax_uid)
    times, read = [], []
    for number in order:
        store.bytes = 0
        start = time.perf_counter()
        wado.stored_frames(store, ref, [number], plan)
        times.append((time.perf_counter() - start) * 1000)
        read.append(store.bytes)
    rest = times[1:]
    return (
        f"first {times[0]:8.1f} ms ({read[0] / 1e6:6.1f} MB) | rest median "
        f"{statistics.median(rest):7.2f} ms, max {max(rest):7.2f} ms "
        f"({statistics.median(read[1:]) / 1e6:6.2f} MB each)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="file,s3")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    order = random.Random(3).sample(range(1, FRAMES + 1), args.requests)
    made = objects()
    with tempfile.TemporaryDirectory(prefix="wado-frames-") as tmp:
        stores: dict[str, Any] = {}
        server = None
        if "file" in args.stores:
            stores["file"] = FileStore(Path(tmp) / "objects")
        if "s3" in args.stores:
            if weed_binary() is None:
                print("s3: skipped, no weed binary")
            else:
                server = SeaweedS3(Path(tmp) / "s3")
                server.start()
                bucket = f"bench-{uuid.uuid4().hex[:8]}"
                stores["s3"] = S3Store(server.endpoint, ACCESS_KEY, SECRET_KEY, bucket)
        try:
            for store_name, inner in stores.items():
                store = Counting(inner)
                for name, (syntax, data) in made.items():
                    key = f"dicom/bench/{name}.dcm"
                    store.put(key, data)
                    ref = InstanceRef("1", "2", "3", "1.2", syntax, key, FRAMES, 1, len(data))
                    print(f"{store_name:4} {name:12} {len(data) / 1e6:6.1f} MB")
                    for mode in ("whole", "ranged"):
                        print(f"  {mode:6} {run(store, ref, order, mode == 'ranged')}")
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
