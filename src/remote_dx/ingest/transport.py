"""TCP options for DICOM associations (PS3.8 §9, the TCP/IP upper-layer mapping).

Shared by the receiver and the township-side push client; kept free of database and storage
imports so ``remote-dx push`` starts fast.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)

#: Largest P-DATA-TF PDU we accept (PS3.8 §9.3.5). Large PDUs mean fewer reads per image;
#: 0 would mean "unlimited", which some senders answer with tiny default PDUs.
MAX_PDU_SIZE = 4 * 1024 * 1024


def set_tcp_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    DIMSE exchanges small PDUs (a C-STORE-RSP is ~200 bytes) that otherwise wait for the peer's
    delayed ACK, ~40 ms each: measured 20 instead of 100 small images/s. pynetdicom never sets
    this option itself.
    """
    transport = event.assoc.dul.socket
    sock = getattr(transport, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # a peer that already hung up
        log.debug("could not set TCP_NODELAY: %s", exc)


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, set_tcp_nodelay)


# -- event-driven association threads -------------------------------------------------------
#
# pynetdicom 3.0 polls: the DUL thread sleeps ``_run_loop_delay`` (1 ms) whenever its socket and
# queues are empty, and the association reactor sleeps 1 ms per loop before checking for a
# decoded DIMSE message. Each C-STORE crosses both threads twice (request in, response out), so
# a one-association sender waits ~2–3 ms per instance in those sleeps (a no-op handler answered
# ~320 ECGs/s), and an idle association still wakes 2 000 times a second. The two subclasses
# below keep pynetdicom's state machine and loops as they are and only replace the waiting:
# the DUL thread blocks in select() on its socket plus a wake-up socket that is poked whenever
# a primitive is queued for it; the reactor's non-blocking "is there a message?" check waits on
# an event that the DUL thread sets when it queues a message or an ACSE primitive. Timeouts
# (ARTIM, idle, kill) are still noticed: the waits are bounded by _IDLE_WAIT.

#: Longest a thread waits without a reason to wake: bounds how late a timer or kill is seen.
_IDLE_WAIT = 0.05


class _SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that sets ``signal`` on every put (under the queue's own lock)."""

    def __init__(self, signal: threading.Event) -> None:
        super().__init__()
        self.signal = signal

    def _put(self, item: object) -> None:
        super()._put(item)
        self.signal.set()


class EventDrivenDUL(DULServiceProvider):
    """DUL provider whose idle wait is select() on the socket and a wake-up socket."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # The loop's own sleep becomes a mere yield; the waiting happens in _is_transport_event.
        self._run_loop_delay = 0

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already poked (buffer full) or closed
            self._wake_w.send(b"\0")

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wake()
        if threading.current_thread() is not self and self.is_alive():
            self.join(timeout=_IDLE_WAIT * 4)
        return True

    def _is_transport_event(self) -> bool:
        transport = self.socket
        sock = getattr(transport, "socket", None)
        if (
            sock is not None
            and self.state_machine.current_state != "Sta13"
            and self.to_provider_queue.empty()
            and self.event_queue.empty()
            and not self._kill_thread
        ):
            # A closed socket fails here; pynetdicom's own check below reports it.
            with contextlib.suppress(OSError, ValueError):
                select.select([sock, self._wake_r], [], [], _IDLE_WAIT)
            with contextlib.suppress(OSError):  # BlockingIOError once drained
                while self._wake_r.recv(4096):
                    pass
        return bool(super()._is_transport_event())

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._wake_r.close()
            self._wake_w.close()


class EventDrivenDIMSE(DIMSEServiceProvider):
    """DIMSE provider whose non-blocking get waits (bounded) for something to do."""

    def __init__(self, assoc: Association, wake: threading.Event) -> None:
        super().__init__(assoc)
        self._wake = wake
        self.msg_queue = _SignallingQueue(wake)

    def get_msg(self, block: bool = False) -> Any:
        if not block and self.msg_queue.empty():
            # Clear first, then look again: a put after the look sets the event for the wait.
            self._wake.clear()
            if self.msg_queue.empty() and self.dul.to_user_queue.empty():
                self._wake.wait(_IDLE_WAIT)
        return super().get_msg(block)


class BulkReadSocket(AssociationSocket):
    """pynetdicom's association socket, reading a PDU in large ``recv_into`` calls.

    pynetdicom 3.0 reads 4 096 bytes per ``recv`` and appends each piece to a bytearray: an
    8 MB radiograph took ~2 000 system calls and Python loop turns (~10 ms). Same contract:
    returns what was read, shorter only if the peer closed the connection.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        nr_read = 0
        with memoryview(buffer) as view:
            while nr_read < nr_bytes:
                received = sock.recv_into(view[nr_read:], min(nr_bytes - nr_read, _READ_CHUNK))
                if not received:
                    break
                nr_read += received
        if nr_read < nr_bytes:
            del buffer[nr_read:]
        return buffer


_READ_CHUNK = 1 << 20


def make_event_driven(assoc: Association) -> None:
    """Swap a freshly created acceptor association's DUL and DIMSE providers (before start)."""
    wake = threading.Event()
    if type(assoc.dul.socket) is AssociationSocket:
        # Only the read method differs; the object was built by pynetdicom's request handler.
        assoc.dul.socket.__class__ = BulkReadSocket
    old, new = assoc.dul, EventDrivenDUL(assoc)
    # What the Association and its socket already gave the old provider: the socket, the
    # queued "transport connection open" event (Evt5) and the timers set from the AE.
    new.socket = old.socket
    new.event_queue = old.event_queue
    new.artim_timer = old.artim_timer
    new._idle_timer = old._idle_timer
    new.to_user_queue = _SignallingQueue(wake)
    assoc.dul = new
    assoc.dimse = EventDrivenDIMSE(assoc, wake)


class FastRequestHandler(RequestHandler):
    """pynetdicom's connection handler, with event-driven association threads."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        if self.server.ssl_context is None:  # select() cannot see TLS-buffered bytes
            make_event_driven(assoc)
        return assoc


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server (named here so the port-sharing one can differ)."""


class ReuseportServer(ReceiverServer):
    """A server that shares its port with other processes (SO_REUSEPORT, Linux ≥ 3.9).

    Several receiver processes bind the same address and the kernel spreads new connections
    across them, so parallel associations use every core despite the GIL.
    """

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
