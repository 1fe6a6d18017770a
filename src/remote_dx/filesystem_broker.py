"""The embedded default's Celery broker: kombu's filesystem transport, with atomic messages.

kombu's ``filesystem://`` transport creates a message file under its final ``*.msg`` name and
only then writes the payload into it. A consumer polling the same folder can pick the file up in
between, read an empty or half-written payload and die in ``json.loads`` — seen here as the
embedded worker's "Unrecoverable error: JSONDecodeError" under load, after which no study was
processed until the reconciler's next pass. The file lock kombu takes does not help: the consumer
renames the file away without asking for it.

:class:`Channel` writes each payload to a hidden temporary name that the consumer's filter
ignores, then renames it into place (``os.replace`` is atomic within one folder), so a consumer
sees either no message or a whole one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

#: The URL scheme Celery's ``broker_url`` names for this transport.
SCHEME = "rdxfs"


class Channel(filesystem.Channel):
    """A filesystem channel whose messages appear in the folder only when complete."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        # Same name shape as kombu's (time-ordered, then unique), so consumers keep FIFO order.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot and no ".msg" ending: the consumer's name filter skips it.
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel` (atomic message files)."""

    Channel = Channel


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
