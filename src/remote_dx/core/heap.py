"""A server process's long-lived heap, set aside from the cyclic garbage collector.

CPython's full collection (the oldest generation) walks every tracked object. A hub process
holds a few hundred thousand objects from its imports and set-up (SQLAlchemy's mappers,
pydicom's dictionaries, pynetdicom's SOP classes, FastAPI's routes) that live as long as the
process. The first full collection after start walked them all inside whatever ran then: in a
receiver process, the first DICOM association cost ~70 ms of CPU against ~10 ms for the next
ones (measured here with ``storescu``; bench/README.md). ``gc.freeze()`` (Python docs, ``gc``)
moves every object alive now into a permanent generation that collections skip.

Call it once, from a process's entry point, after its set-up and before it serves: never inside
code that tests run in-process, where objects frozen now could not be collected once they become
garbage. In a prefork parent it also keeps the children's copy-on-write pages shared.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what set-up left behind, then freeze the rest; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
