"""TCP options for DICOM associations (PS3.8 §9, the TCP/IP upper-layer mapping).

Shared by the receiver and the township-side push client; kept free of database and storage
imports so ``remote-dx push`` starts fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import _config, _handlers, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
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


# -- association negotiation: each UID validated once, not once per context -----------------
#
# An A-ASSOCIATE-RQ from storescu proposes ~120 presentation contexts; pynetdicom turns every
# abstract and transfer syntax into a pydicom UID through ``set_uid``, which checks it against
# the UI regular expression twice (pydicom's reading validation and pynetdicom's own): ~25 ms
# of CPU per association, more than filing five ECGs, and a cart often opens one association
# per recording. The same few hundred UIDs come again in every request, so the outcome is
# remembered per input. Only successes are kept (a bad UID is checked, logged and refused
# every time, as before); the result is the same immutable UID object pynetdicom would make.

_UID_CACHE_MAX = 4096


def _cacheable(value: Any) -> bool:
    # A UID that carries a private transfer syntax's encoding is passed on as it is.
    return type(value) in (str, bytes) or (
        type(value) is UID and not hasattr(value, "_PRIVATE_TS_ENCODING")
    )


def _memoised_set_uid(set_uid: Any) -> Any:
    if getattr(set_uid, "rdx_memoised", False):
        return set_uid
    cache: dict[tuple[Any, ...], Any] = {}

    def cached(
        value: Any,
        name: str,
        allow_empty: bool = True,
        allow_none: bool = True,
        validate: bool = True,
    ) -> Any:
        # A UID already made (pynetdicom passes its own UIDs on from item to primitive to
        # context) is checked again by set_uid like a string: remembered the same way.
        if not _cacheable(value):  # None or anything else: as is
            return set_uid(value, name, allow_empty, allow_none, validate)
        key = (type(value), value, name, allow_empty, allow_none, validate)
        uid = cache.get(key)
        if uid is None:
            uid = set_uid(value, name, allow_empty, allow_none, validate)
            if len(cache) < _UID_CACHE_MAX:
                cache[key] = uid
        return uid

    cached.rdx_memoised = True  # type: ignore[attr-defined]
    return cached


def _memoised_add_transfer_syntax(add: Any) -> Any:
    """``PresentationContext.add_transfer_syntax`` with its checks done once per syntax.

    Every proposed context of every association adds its transfer syntaxes one by one, each
    made a UID and matched against the UI expression three times. A syntax that was once added
    without any warning (a valid UID naming a transfer syntax, or a private one) is added again
    as that same UID; anything else goes through pynetdicom's checks and logging every time.
    """
    if getattr(add, "rdx_memoised", False):
        return add
    accepted: dict[tuple[type, Any], UID] = {}

    def add_transfer_syntax(context: PresentationContext, syntax: Any) -> None:
        key = (type(syntax), syntax) if _cacheable(syntax) else None
        uid = accepted.get(key) if key is not None else None
        if uid is not None:
            if uid not in context._transfer_syntax:
                context._transfer_syntax.append(uid)
            return
        before = len(context._transfer_syntax)
        add(context, syntax)
        if key is None or len(context._transfer_syntax) == before:
            return
        added = context._transfer_syntax[-1]
        quiet = added.is_valid and (added.is_private or added.is_transfer_syntax)
        if quiet and len(accepted) < _UID_CACHE_MAX:
            accepted[key] = added

    add_transfer_syntax.rdx_memoised = True  # type: ignore[attr-defined]
    return add_transfer_syntax


def _memoise_uid_validation() -> None:
    from pynetdicom import pdu_items, pdu_primitives, presentation

    for module in (pdu_items, pdu_primitives, presentation):
        module.set_uid = _memoised_set_uid(module.set_uid)  # type: ignore[attr-defined]
    PresentationContext.add_transfer_syntax = _memoised_add_transfer_syntax(  # type: ignore[method-assign]
        PresentationContext.add_transfer_syntax
    )


_memoise_uid_validation()


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


class _ReactorClock:
    """``pynetdicom.association``'s ``time`` module, with the reactor's 1 ms nap made a wait.

    The acceptor's reactor loop begins every turn with ``time.sleep(0.001)`` before it looks for
    the next DIMSE message: after each C-STORE-RSP the association thread slept at least 1 ms
    (and, on a busy machine, until the scheduler woke it again) while the next request was
    already waiting. For event-driven associations the nap becomes a wait on the association's
    wake-up event, set when a message or ACSE primitive is queued for it: it ends at once when
    there is work, and after the same 1 ms otherwise. Every other caller sleeps as before.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        wake = getattr(threading.current_thread(), "rdx_wake", None)
        if wake is not None and seconds == _REACTOR_NAP:
            wake.wait(seconds)
            return
        time.sleep(seconds)


_REACTOR_NAP = 0.001


def _replace_reactor_nap() -> None:
    from pynetdicom import association

    if not isinstance(association.time, _ReactorClock):
        association.time = _ReactorClock()  # type: ignore[assignment]


_replace_reactor_nap()


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
        if threading.current_thread() is self:
            return  # a C-STORE served in this thread: the loop sends its answer next anyway
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

    def _read_pdu_data(self) -> None:
        """pynetdicom's PDU read, with P-DATA-TF values handed on as views of the read buffer.

        pynetdicom copies every received PDU four times on its way to DIMSE (appended to the
        6-byte header, made bytes for EVT_DATA_RECV, each PDV value sliced out, then joined by
        the DIMSE reader); storescu sends a 512×512 CT slice as four ~128 KB PDUs. Here a
        P-DATA-TF PDU (PS3.8 §9.3.5) is read into one buffer and its PDVs are ``memoryview``s
        of it, as long as nothing is bound to EVT_DATA_RECV or EVT_PDU_RECV (those handlers are
        given pynetdicom's own objects). Every other PDU, and every error, goes the way
        pynetdicom's own method goes (same events, same log lines).
        """
        assoc = self.assoc
        if assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV):
            super()._read_pdu_data()
            return
        transport = cast(AssociationSocket, self.socket)
        try:
            header = transport.recv(6)
        except (OSError, TimeoutError) as exc:
            log.error("Connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(header) != 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
        if pdu_type not in _PDU_TYPES:
            log.error("Unknown PDU type received '0x%02X'", pdu_type)
            self.event_queue.put("Evt19")
            return
        try:
            body = transport.recv(pdu_length)
        except (OSError, TimeoutError) as exc:
            log.error("Connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            log.error(
                "The received PDU is shorter than expected (%d of %d bytes received)",
                len(body) + 6,
                pdu_length + 6,
            )
            self.event_queue.put("Evt17")
            return
        if pdu_type != _P_DATA_TF:
            try:
                pdu, event = self._decode_pdu(header + body)
            except Exception:
                log.exception("Unable to decode the received PDU data")
                self.event_queue.put("Evt19")
                return
            self.event_queue.put(event)
            self._recv_pdu.put(pdu)
            return
        items = _pdv_views(body)
        if items is None:
            log.error("Unable to decode the received P-DATA-TF PDU: malformed PDV items")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put("Evt10")
        self._recv_pdu.put(_ReceivedPData(items))


_PDU_HEADER = struct.Struct(">BBL")
_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04
_PDV_HEADER = struct.Struct(">LB")


def _pdv_views(body: bytearray) -> list[tuple[int, memoryview]] | None:
    """The presentation data value items of a P-DATA-TF PDU body (PS3.8 §9.3.5.1), as views.

    None when an item's length runs past the PDU or leaves no room for its context ID.
    """
    items = []
    view = memoryview(body)
    offset, end = 0, len(body)
    while offset < end:
        if offset + 5 > end:
            return None
        length, context_id = _PDV_HEADER.unpack_from(body, offset)
        if length < 1 or offset + 4 + length > end:
            return None
        items.append((context_id, view[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return items


class _ReceivedPData:
    """A received P-DATA-TF PDU for the state machine: only ``to_primitive`` is asked of it."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[int, memoryview]]) -> None:
        self.items = items

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        # As pynetdicom's own PDU does: the setter checks an empty list, the items are appended.
        primitive.presentation_data_value_list = []
        primitive.presentation_data_value_list.extend(self.items)  # type: ignore[arg-type]
        return primitive


class EventDrivenDIMSE(DIMSEServiceProvider):
    """DIMSE provider whose non-blocking get waits (bounded) for something to do.

    It also reads C-STORE requests and writes C-STORE responses itself (see
    :func:`parse_store_request`, :func:`encode_store_response`) when nothing is bound to
    EVT_DIMSE_RECV / EVT_DIMSE_SENT (those handlers are given pynetdicom's decoded messages).
    Every other message, and any C-STORE command set this reader does not fully understand,
    is handed to pynetdicom's decoder unchanged.

    Such a C-STORE request is also served in the DUL thread that read it, by the
    association's own ``_serve_request`` (the same Storage Service Class SCP, the same
    EVT_C_STORE handler and answer), instead of being queued for the association's reactor
    thread. A sender waits for each answer (one outstanding operation, PS3.7
    §D.3.3.3), so the DUL thread has nothing else to do meanwhile; what it saves is the two
    thread hand-offs per instance (request to the reactor, response back).
    """

    def __init__(self, assoc: Association, wake: threading.Event) -> None:
        super().__init__(assoc)
        self._wake = wake
        self.msg_queue = _SignallingQueue(wake)
        self._command: list[bytes] = []  # command fragments of the message being received
        self._store: tuple[int, StoreRequest] | None = None  # a C-STORE-RQ awaiting its data set
        self._data: list[memoryview] = []  # ... and the data set fragments received so far

    def get_msg(self, block: bool = False) -> Any:
        if not block and self.msg_queue.empty():
            # Clear first, then look again: a put after the look sets the event for the wait.
            self._wake.clear()
            if self.msg_queue.empty() and self.dul.to_user_queue.empty():
                self._wake.wait(_IDLE_WAIT)
        return super().get_msg(block)

    def _fast(self, event: evt.EventType) -> bool:
        return not _config.STORE_RECV_CHUNKED_DATASET and not self.assoc.get_handlers(event)

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Reassemble a DIMSE message from P-DATA values (PS3.8 §E.2, PS3.7 §6.3.1)."""
        if self.message is not None or not self._fast(evt.EVT_DIMSE_RECV):
            # pynetdicom's decoder is part-way through a message or must give handlers its own
            # objects: it is given bytes, as its own PDU reader gives them.
            _values_as_bytes(primitive)
            super().receive_primitive(primitive)
            return
        values = primitive.presentation_data_value_list
        for index, (context_id, data) in enumerate(values):
            control = data[0]
            if control & _COMMAND:
                if self._store is not None:  # a new command inside a data set
                    self._store, self._data = None, []
                    self._fall_back(values[index:])
                    return
                self._command.append(data[1:])
                if not control & _LAST:
                    continue
                command = b"".join(self._command)
                self._command = []
                request = parse_store_request(command)
                if request is None:
                    self._fall_back([(context_id, b"\x03" + command), *values[index + 1 :]])
                    return
                self._store = (context_id, request)
            else:
                if self._store is None:  # a data set without a command: pynetdicom's call
                    self._command = []
                    self._fall_back(values[index:])
                    return
                self._data.append(memoryview(data)[1:])
                if control & _LAST:
                    self._deliver()

    def _fall_back(self, values: list[tuple[int, bytes]]) -> None:
        replay = P_DATA()
        replay.presentation_data_value_list = [[cid, bytes(data)] for cid, data in values]
        super().receive_primitive(replay)

    def _deliver(self) -> None:
        """Queue the complete C-STORE-RQ as the primitive pynetdicom's decoder would make."""
        assert self._store is not None
        (context_id, request), fragments = self._store, self._data
        self._store, self._data = None, []
        try:
            # The primitive's own setters validate the values, as for pynetdicom's decoder.
            primitive = C_STORE()
            primitive.MessageID = request.message_id
            primitive.AffectedSOPClassUID = request.sop_class_uid
            primitive.AffectedSOPInstanceUID = request.sop_instance_uid
            primitive.Priority = request.priority
            if request.move_originator_ae is not None:
                primitive.MoveOriginatorApplicationEntityTitle = request.move_originator_ae
            if request.move_originator_id is not None:
                primitive.MoveOriginatorMessageID = request.move_originator_id
            # One copy of the fragments; BytesIO shares the bytes (getvalue() copies nothing).
            primitive.DataSet = BytesIO(b"".join(fragments))
        except (ValueError, TypeError) as exc:
            log.error("invalid C-STORE request, aborting the association: %s", exc)
            self.dul.event_queue.put("Evt19")  # what pynetdicom does with an invalid message
            return
        finally:
            for fragment in fragments:
                fragment.release()
        if threading.current_thread() is self.dul:
            # pynetdicom grants one outstanding operation at most (its Asynchronous Operations
            # Window answer is always 1/1, PS3.7 §D.3.3.3): the sender waits for this answer.
            # Meanwhile the reactor thread, idle now, checks the network timeout: a store in
            # progress is no idleness, as it was not while the reactor itself served it.
            idle = self.dul._idle_timer
            idle.stop()
            try:
                self.assoc._serve_request(primitive, context_id)
            finally:
                idle.restart()
            return
        self.msg_queue.put((context_id, primitive))

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            isinstance(primitive, C_STORE)
            and primitive.MessageIDBeingRespondedTo is not None
            and self._fast(evt.EVT_DIMSE_SENT)
        ):
            encoded = _store_response_bytes(primitive)
            # The whole command set fits in one PDV unless the peer asked for absurdly small PDUs.
            limit = self.maximum_pdu_size
            if encoded is not None and (not limit or len(encoded) + 7 <= limit):
                pdata = P_DATA()
                pdata.presentation_data_value_list = [[context_id, b"\x03" + encoded]]
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


def _values_as_bytes(primitive: P_DATA) -> None:
    values = primitive.presentation_data_value_list
    for index, (context_id, data) in enumerate(values):
        if not isinstance(data, bytes):
            values[index] = (context_id, bytes(data))  # type: ignore[call-overload]


def _store_response_bytes(rsp: C_STORE) -> bytes | None:
    if rsp.OffendingElement is not None or rsp.Status is None:
        return None
    if rsp.MessageIDBeingRespondedTo is None or not rsp.AffectedSOPInstanceUID:
        return None
    return encode_store_response(
        rsp.MessageIDBeingRespondedTo,
        str(rsp.AffectedSOPClassUID or ""),
        str(rsp.AffectedSOPInstanceUID),
        rsp.Status,
        rsp.ErrorComment,
    )


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
    assoc.rdx_wake = wake  # type: ignore[attr-defined]  # see _ReactorClock
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        # The "standard" handlers format every PDU and DIMSE message for a log line at INFO or
        # DEBUG (~0.2 ms per C-STORE), even when pynetdicom's logger discards it.
        for event, handler in _STANDARD_HANDLERS:
            assoc.unbind(event, handler)


_STANDARD_HANDLERS = (
    (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
)


class FastRequestHandler(RequestHandler):
    """pynetdicom's connection handler, with event-driven association threads."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        if self.server.ssl_context is None:  # select() cannot see TLS-buffered bytes
            make_event_driven(assoc)
        return assoc

    def handle(self) -> None:
        """pynetdicom's handle(); a dispatched connection reports its end to the dispatcher."""
        ended = getattr(self.server, "association_ended", None)
        if ended is None:
            super().handle()
            return
        try:
            assoc = self._create_association()
            run = assoc.run

            def run_and_report() -> None:
                try:
                    run()
                finally:
                    ended()

            assoc.run = run_and_report  # type: ignore[method-assign]
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
        except BaseException:
            ended()
            raise


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, copying its contexts cheaply per association."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = _SupportedContexts(self.contexts)


class _SupportedContexts(list):  # type: ignore[type-arg]
    """The server's presentation contexts (PS3.8 §7.1.1.13), which every association copies.

    pynetdicom deep-copies the list for each new association: with every storage SOP class
    and ten transfer syntaxes that is ~170 contexts and ~18 ms of CPU, more than four ECGs
    cost to file — and an ECG cart often opens one association per recording. An association
    only sets a context's id, result and roles and may reorder its transfer syntaxes, so a
    shallow copy of each context with its own transfer syntax list is enough.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            # What copy.copy() does for a plain object, without its generic protocol lookups
            # (~30 µs per context through __reduce_ex__; this is ~1 µs).
            twin = object.__new__(type(context))
            twin.__dict__.update(context.__dict__)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


class ReuseportServer(ReceiverServer):
    """A server that shares its port with other processes (SO_REUSEPORT, Linux ≥ 3.9).

    Several receiver processes bind the same address and the kernel spreads new connections
    across them, so parallel associations use every core despite the GIL.
    """

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


# -- C-STORE without pydicom command sets ---------------------------------------------------
#
# pynetdicom decodes every command set into a pydicom Dataset, converts it into a primitive,
# and encodes each response the same way back (Dataset → bytes): ~0.6 ms of CPU per instance,
# plus the "standard" logging handlers that format every PDU and message even when the
# pynetdicom logger is silent. The C-STORE command sets are tiny, fixed lists of elements, so
# the receiver reads the request and writes the response with struct directly; anything else
# (C-ECHO, an unexpected element, a malformed value) goes through pynetdicom's own path.

# PS3.7 §9.3.1.1 Table 9.3-1: the C-STORE-RQ command elements (group 0000) and their VRs.
_STORE_RQ_ELEMENTS: dict[int, str] = {
    0x0000: "UL",  # Command Group Length
    0x0002: "UI",  # Affected SOP Class UID
    0x0100: "US",  # Command Field
    0x0110: "US",  # Message ID
    0x0700: "US",  # Priority
    0x0800: "US",  # Command Data Set Type
    0x1000: "UI",  # Affected SOP Instance UID
    0x1030: "AE",  # Move Originator Application Entity Title
    0x1031: "US",  # Move Originator Message ID
}
_VALUE_LENGTH = {"UL": 4, "US": 2}
_C_STORE_RQ, _C_STORE_RSP = 0x0001, 0x8001
_NO_DATA_SET = 0x0101  # Command Data Set Type "null" (PS3.7 §E.1)
_COMMAND, _LAST = 0x01, 0x02  # message control header bits (PS3.8 §E.2)


@dataclass(frozen=True)
class StoreRequest:
    """The fields of a C-STORE-RQ command set (PS3.7 §9.3.1.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    message_id: int
    priority: int
    move_originator_ae: str | None = None
    move_originator_id: int | None = None


def parse_store_request(command: bytes) -> StoreRequest | None:
    """Decode an Implicit VR Little Endian command set (PS3.7 §6.3.1) if it is a C-STORE-RQ.

    None for anything else — another command, a data-set-less C-STORE, an element this reader
    does not know, a value of the wrong size — so the caller can leave it to pynetdicom.
    """
    values: dict[int, bytes] = {}
    pos, end = 0, len(command)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = _IMPLICIT_HEADER.unpack_from(command, pos)
        pos += 8
        vr = _STORE_RQ_ELEMENTS.get(element)
        if group != 0x0000 or vr is None or pos + length > end or element in values:
            return None
        if vr in _VALUE_LENGTH and length != _VALUE_LENGTH[vr]:
            return None
        values[element] = command[pos : pos + length]
        pos += length
    try:
        if _us(values[0x0100]) != _C_STORE_RQ or _us(values[0x0800]) == _NO_DATA_SET:
            return None
        sop_class = _text(values[0x0002], b"\0 ")
        sop_instance = _text(values[0x1000], b"\0 ")
        move_ae = values.get(0x1030)
        move_id = values.get(0x1031)
        return StoreRequest(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            message_id=_us(values[0x0110]),
            priority=_us(values[0x0700]),
            move_originator_ae=None if move_ae is None else _text(move_ae, b" \0"),
            move_originator_id=None if move_id is None else _us(move_id),
        )
    except (KeyError, UnicodeDecodeError):
        return None


def encode_store_response(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None = None,
) -> bytes | None:
    """A C-STORE-RSP command set (PS3.7 §9.3.1.2, Table 9.3-2), Implicit VR Little Endian.

    The same bytes pynetdicom encodes for these fields: elements in tag order, UIDs padded with
    NUL and the Error Comment (LO) with a space to an even length (PS3.5 §6.2), the Command
    Group Length first. None if the comment is not plain ASCII (the command set's default
    character repertoire, PS3.7 §6.3.1): pynetdicom's path then encodes it.
    """
    try:
        comment = None if error_comment is None else error_comment.encode("ascii")
    except UnicodeEncodeError:
        return None
    body = [
        _element(0x0002, _padded(sop_class_uid.encode("ascii"), b"\0")),
        _element(0x0100, _C_STORE_RSP.to_bytes(2, "little")),
        _element(0x0120, message_id.to_bytes(2, "little")),
        _element(0x0800, _NO_DATA_SET.to_bytes(2, "little")),
        _element(0x0900, status.to_bytes(2, "little")),
    ]
    if comment is not None:
        body.append(_element(0x0902, _padded(comment, b" ")))
    body.append(_element(0x1000, _padded(sop_instance_uid.encode("ascii"), b"\0")))
    encoded = b"".join(body)
    return _element(0x0000, len(encoded).to_bytes(4, "little")) + encoded


_IMPLICIT_HEADER = struct.Struct("<HHL")


def _us(value: bytes) -> int:
    return int.from_bytes(value, "little")


def _text(value: bytes, padding: bytes) -> str:
    return value.rstrip(padding).decode("ascii")


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _element(element: int, value: bytes) -> bytes:
    return _IMPLICIT_HEADER.pack(0x0000, element, len(value)) + value


# -- several receiver processes behind one listening socket ----------------------------------
#
# One Python process files instances on one core at a time (the GIL). SO_REUSEPORT lets several
# processes listen on one port, but the kernel picks the listener by a hash of the connection's
# addresses, not by load: four long associations from one modality host often landed 3:1 on two
# processes, one of them saturated while the other idled. Here one acceptor owns the port and
# hands every accepted connection (the descriptor itself, SCM_RIGHTS over a Unix socket) to the
# receiver process with the fewest open associations; each process reports an association's end
# with one byte on the same socket.

_ENDED, _READY = b"-", b"+"


class PassedConnectionServer(ReceiverServer):
    """A receiver whose connections come from an :class:`AssociationDispatcher`, not a port.

    The class attribute ``channel`` (set by :func:`passed_connection_server`) is this process's
    end of the Unix socket; the server selects on it as it would on a listening socket.
    """

    channel: socket.socket
    _orphaned = False

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = self.channel
        # server_address stays the dispatcher's (host, port): what this receiver serves.

    def server_activate(self) -> None:
        pass

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock = cast(socket.socket, self.socket)
        message, fds, _flags, _address = socket.recv_fds(sock, 64, 8)
        if not message and not fds:
            # The acceptor is gone (it closes the channel only when stopping or dying): without
            # it no connection can arrive, so stop like SIGTERM would.
            if not self._orphaned:
                self._orphaned = True
                log.info("association dispatcher gone; stopping this receiver process")
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(_IDLE_WAIT)  # the closed channel stays readable until we stop
            raise OSError("dispatcher channel closed")
        connections = [socket.socket(fileno=fd) for fd in fds]
        for extra in connections[1:]:  # one descriptor per message is all we send
            extra.close()
        if not connections:
            raise OSError("message without a connection")
        client = connections[0]
        try:
            address = client.getpeername()
        except OSError:  # the peer left while the connection was passed
            client.close()
            raise
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, (str(address[0]), int(address[1]))

    def ready(self) -> None:
        """Tell the dispatcher this process serves: connections may come now."""
        with contextlib.suppress(OSError):
            self.channel.send(_READY)

    def association_ended(self) -> None:
        """Tell the dispatcher this process has one association fewer."""
        with contextlib.suppress(OSError):
            self.channel.send(_ENDED)


def passed_connection_server(channel: socket.socket) -> type[PassedConnectionServer]:
    """The server class of one receiver process that takes connections from ``channel``."""
    return type("PassedConnectionServer", (PassedConnectionServer,), {"channel": channel})


@dataclass
class _Worker:
    channel: socket.socket
    load: int = 0  # associations handed over and not yet reported ended
    alive: bool = True
    ready: bool = False  # the process has said it serves


class AssociationDispatcher:
    """Accept DICOM connections on one port; hand each to the least-loaded receiver process.

    Ties go round-robin. Connections wait in the listen backlog until every receiver process
    has said it is ready (or ``start_within`` seconds have passed), so a modality is never
    handed to a process still importing; later only ready processes get connections. A
    receiver whose channel fails is skipped until :meth:`replace` gives its slot a new
    channel; with none left a connection is closed at once (the modality sees a refused
    association and retries, as with a receiver that is down).
    """

    def __init__(
        self, address: tuple[str, int], backlog: int = 128, start_within: float = 120.0
    ) -> None:
        self.listener = socket.create_server(address, backlog=backlog)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._next = 0
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._start_within = start_within

    def add(self, channel: socket.socket) -> int:
        """Register a receiver process's channel; returns its slot."""
        with self._lock:
            self._workers.append(_Worker(channel))
            index = len(self._workers) - 1
        self._poke()
        return index

    def replace(self, index: int, channel: socket.socket) -> None:
        """A restarted receiver process takes over slot ``index``."""
        with self._lock:
            old = self._workers[index]
            self._workers[index] = _Worker(channel)
        old.channel.close()
        self._poke()

    def loads(self) -> list[int]:
        """Open associations per receiver process slot, as far as the dispatcher knows."""
        with self._lock:
            return [worker.load for worker in self._workers]

    def states(self) -> list[tuple[bool, bool, int]]:
        """(alive, ready, open associations) per receiver process slot."""
        with self._lock:
            return [(worker.alive, worker.ready, worker.load) for worker in self._workers]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._serve, name="AssociationDispatcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting (the port closes); associations already handed over go on."""
        self._stopping = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.listener.close()
        with self._lock:
            for worker in self._workers:
                worker.channel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _serve(self) -> None:
        deadline = time.monotonic() + self._start_within
        accepting = False
        while not self._stopping:
            with self._lock:
                channels = {w.channel: w for w in self._workers if w.alive}
                if not accepting:
                    ready = all(w.ready for w in self._workers)
                    accepting = ready or time.monotonic() > deadline
            watched = [self._wake_r, *channels]
            if accepting:
                watched.append(self.listener)
            try:
                readable, _, _ = select.select(watched, [], [], 1.0)
            except (OSError, ValueError):  # a channel closed by replace(): look again
                continue
            for sock in readable:
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif sock is self.listener:
                    self._accept()
                else:
                    self._read_reports(channels[sock])

    def _read_reports(self, worker: _Worker) -> None:
        try:
            data = worker.channel.recv(4096)
        except OSError:
            data = b""
        with self._lock:
            if not data:
                worker.alive = False  # the process died; replace() brings a new one
                worker.load = 0
            else:
                worker.ready = worker.ready or _READY in data
                worker.load = max(0, worker.load - data.count(_ENDED))

    def _accept(self) -> None:
        try:
            connection, _address = self.listener.accept()
        except OSError:
            return
        with connection:
            while True:
                with self._lock:
                    live = [w for w in self._workers if w.alive and w.ready]
                    live = live or [w for w in self._workers if w.alive]
                    if not live:
                        log.error("no receiver process to take a connection; closing it")
                        return
                    self._next += 1
                    order = live[self._next % len(live) :] + live[: self._next % len(live)]
                    worker = min(order, key=lambda w: w.load)
                    worker.load += 1
                try:
                    socket.send_fds(worker.channel, [b"C"], [connection.fileno()])
                    return  # the receiver has its own descriptor; ours closes here
                except OSError as exc:
                    log.error("receiver process unreachable (%s); trying another", exc)
                    with self._lock:
                        worker.alive = False
                        worker.load = 0
