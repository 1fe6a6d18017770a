"""Decoded copies of compressed frames, kept beside the stored instance.

A reader's browser decodes JPEG 2000 and JPEG-LS in WebAssembly: one 2048×2048 DX frame took
1.2–1.5 s of the click-to-image time in headless Chromium here, longer than everything else
together. The processing worker decodes each study's images for the preview anyway, so for every
single-frame image stored in an expensive-to-decode transfer syntax it also keeps the decoded
frame as ``renditions/<object key>/<frame>.le``: the native pixels in Explicit VR Little Endian,
byte for byte what a decode of the stored frame gives (lossless, nothing re-windowed or scaled).
WADO-RS frames asked for in ``1.2.840.10008.1.2.1`` (PS3.18 §8.7.3.5.2, "transfer-syntax"
parameter of the Accept header) are answered from it, so the browser only copies bytes.

The stored instance stays the archive's copy and is what every other retrieve returns; a
rendition is derived data (``remote-dx fsck`` counts it among "other objects") and can be
deleted at any time: the next request decodes again.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from remote_dx.storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

RENDITION_PREFIX = "renditions/"

#: Transfer syntaxes whose browser-side (WebAssembly) decode dominates the time to first image.
#: Baseline JPEG and RLE decode fast enough in the browser and stay as they are.
EXPENSIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)

#: Only images big enough for the decode to matter (a CT slice decodes in a few ms).
MIN_PIXELS = 1024 * 1024


def rendition_key(object_key: str, frame: int) -> str:
    """Where frame ``frame`` (1-based) of the instance at ``object_key`` is kept decoded."""
    return f"{RENDITION_PREFIX}{object_key}/{frame}.le"


def decoded_frame(ds: Dataset, index: int) -> bytes:
    """Frame ``index`` (0-based) decoded to native little-endian pixel bytes.

    Raises whatever the decoder raises when the frame cannot be decoded.
    """
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = pixel_array(ds, index=index) if frames > 1 else ds.pixel_array
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def get(store: ObjectStore, object_key: str, frame: int) -> bytes | None:
    """The kept decoded frame, or ``None`` when there is none (yet)."""
    try:
        return store.get(rendition_key(object_key, frame))
    except ObjectNotFound:
        return None


def worth_keeping(ds: Dataset, *, header_only: bool = False) -> bool:
    """A single-frame image, large, in a transfer syntax that is slow to decode in a browser.

    ``header_only``: ``ds`` was read with ``stop_before_pixels``, so Pixel Data is not looked for.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in EXPENSIVE_SYNTAXES:
        return False
    if not header_only and "PixelData" not in ds:
        return False
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return False
    return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) >= MIN_PIXELS


def keep(store: ObjectStore, object_key: str, ds: Dataset) -> bool:
    """Decode and keep ``ds``'s frame when :func:`worth_keeping`; ``True`` when one was written.

    Never raises: a frame that cannot be decoded here is decoded (or refused) at request time.
    """
    if not worth_keeping(ds):
        return False
    try:
        data = decoded_frame(ds, 0)
    except Exception:  # a decoder's failure only costs the reader the decode (or a 406)
        log.warning("no decoded rendition for %s: cannot decode", object_key, exc_info=True)
        return False
    return keep_decoded(store, object_key, data)


def keep_decoded(store: ObjectStore, object_key: str, data: bytes) -> bool:
    """Keep frame 1's decoded bytes; ``False`` (logged) when the store refuses them."""
    try:
        store.put(rendition_key(object_key, 1), data)
    except Exception:  # a store's failure only costs the next reader a decode
        log.warning("no decoded rendition for %s: store refused it", object_key, exc_info=True)
        return False
    return True
