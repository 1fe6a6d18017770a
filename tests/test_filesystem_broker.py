"""The embedded broker never hands a consumer a half-written message.

kombu's stock filesystem channel creates ``*.msg`` before writing into it; a consumer polling the
folder at that moment reads a short payload and the embedded worker dies on ``JSONDecodeError``.
A producer and a consumer race on one folder here: every message must arrive whole and once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from kombu import Connection
from kombu.transport import filesystem
from kombu.transport.virtual.base import Empty

from remote_dx import filesystem_broker

MESSAGES = 3000
PAYLOAD = "x" * 200_000  # large enough that a write is not one instant


def _race(transport: type, folder: Path) -> tuple[list[str], list[BaseException]]:
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(folder / "control"),
    }
    (folder / "control").mkdir(parents=True, exist_ok=True)
    received: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def produce() -> None:
        with Connection(transport=transport, transport_options=options) as conn:
            channel = conn.default_channel
            for i in range(MESSAGES):
                channel._put("q", {"n": i, "body": PAYLOAD})
        done.set()

    def consume() -> None:
        with Connection(transport=transport, transport_options=options) as conn:
            channel = conn.default_channel
            while len(received) < MESSAGES:
                try:
                    message = channel._get("q")
                except Empty:
                    if done.is_set() and not any(folder.glob("*.q.msg")):
                        return
                    continue
                except Exception as exc:  # the failure under test
                    errors.append(exc)
                    if len(errors) > 5:
                        return
                    continue
                received.append(str(message["n"]))

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return received, errors


def test_a_racing_consumer_gets_every_message_whole_and_once(tmp_path: Path) -> None:
    received, errors = _race(filesystem_broker.Transport, tmp_path / "ours")
    assert errors == []
    assert sorted(received, key=int) == [str(i) for i in range(MESSAGES)]
    assert not list((tmp_path / "ours").glob(".*.part")), "no temporary file left behind"


def test_the_stock_transport_shows_the_race_this_module_closes(tmp_path: Path) -> None:
    # Guard that the test above can fail: kombu's own channel, same race, loses or breaks messages.
    received, errors = _race(filesystem.Transport, tmp_path / "stock")
    if not errors and len(received) == MESSAGES:
        pytest.skip("the race did not show this time (timing-dependent); nothing to compare")
    assert errors or len(received) < MESSAGES


def test_celery_is_configured_with_the_atomic_transport_by_scheme() -> None:
    from kombu.transport import resolve_transport

    assert resolve_transport(filesystem_broker.SCHEME) is filesystem_broker.Transport
