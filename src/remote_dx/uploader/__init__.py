"""The township side of ECG upload: ``remote-dx upload-ecg FILE|DIR... [--watch]``.

A cart's PC exports ECG files (DICOM waveform, WFDB ``.hea`` + ``.dat``, HL7 aECG / Philips /
GE XML, CSV) into a folder; this package sends each ECG once to the hub's ``POST /api/v1/ecg``
and keeps an on-disk journal so that nothing is lost while the hub is unreachable and nothing is
sent twice:

* ``exports``  — which files on disk make one ECG (WFDB grouping, ignored and unfinished files);
* ``journal``  — the durable queue (spooled copies), the delivered/rejected records, the lock;
* ``hub``      — the HTTP client and how each answer is classified (delivered / bad input /
  hub unreachable / configuration error);
* ``runner``   — the one-shot and watch loops with exponential backoff, and the CLI entry.

Deliberately light: only httpx, watchdog and rich are imported, never the hub's database,
DICOM or signal-processing stack, so the uploader starts fast on an old township PC.
"""

from remote_dx.uploader.runner import upload_cli

__all__ = ["upload_cli"]
