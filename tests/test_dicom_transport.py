"""The receiver's association threads (ingest/transport.py) wait for work instead of napping."""

from __future__ import annotations

import threading
import time

from pynetdicom import association

from remote_dx.ingest.transport import _ReactorClock


def test_reactor_nap_ends_when_work_arrives_and_other_sleeps_are_untouched() -> None:
    assert isinstance(association.time, _ReactorClock)  # installed when transport is imported
    wake = threading.Event()
    woke_after: list[float] = []

    class Reactor(threading.Thread):
        rdx_wake = wake

        def run(self) -> None:
            started = time.monotonic()
            association.time.sleep(0.001)  # the acceptor reactor's nap, with work waiting
            woke_after.append(time.monotonic() - started)

    wake.set()  # a DIMSE message was queued before the nap
    waited = []

    def counting_wait(timeout: float | None = None) -> bool:
        waited.append(timeout)
        return True

    wake.wait = counting_wait  # type: ignore[method-assign]
    reactor = Reactor()
    reactor.start()
    reactor.join(timeout=5)
    assert waited == [0.001]  # the nap became a wait on the association's event
    assert woke_after

    # Threads without an association event, and other durations, sleep as before.
    slept: list[float] = []
    real_sleep = time.sleep
    try:
        time.sleep = slept.append  # type: ignore[assignment]
        association.time.sleep(0.001)
        association.time.sleep(0.0001)
    finally:
        time.sleep = real_sleep
    assert slept == [0.001, 0.0001]
    assert association.time.monotonic is time.monotonic


def test_pdv_items_are_views_of_the_pdu_and_malformed_ones_are_refused() -> None:
    from remote_dx.ingest.transport import _pdv_views, _ReceivedPData

    command = b"\x03" + b"C" * 10  # last command fragment
    data = b"\x02" + bytes(range(200))  # last data set fragment
    # Each item: length (context ID + value), context ID, value (PS3.8 §9.3.5.1).
    body = bytearray()
    for context_id, value in ((1, command), (3, data)):
        body += (len(value) + 1).to_bytes(4, "big") + bytes([context_id]) + value
    items = _pdv_views(body)
    assert items is not None
    assert [(cid, bytes(view)) for cid, view in items] == [(1, command), (3, data)]
    assert all(view.obj is body for _, view in items)  # no copy of the PDU's bytes
    primitive = _ReceivedPData(items).to_primitive()
    assert [(cid, bytes(v)) for cid, v in primitive.presentation_data_value_list] == [
        (1, command),
        (3, data),
    ]
    # An item claiming more than the PDU holds, or no room for its context ID: refused.
    assert _pdv_views(bytearray(b"\x00\x00\x01\x00\x01abc")) is None
    assert _pdv_views(bytearray(b"\x00\x00\x00\x00\x01")) is None
    assert _pdv_views(bytearray(b"\x00\x00")) is None
