"""The hub's DICOM receiver: Verification and Storage SCP (PS3.4 Annexes A and B) on pynetdicom.

* Only registered, enabled devices may associate: the calling AE title (PS3.8 §7.1.1.5) is looked
  up in the database on every association request, so a device added while the receiver runs is
  accepted at once. Others get A-ASSOCIATE-RJ "rejected-permanent / calling AE title not
  recognised" (PS3.8 §7.1.1.9).
* Each instance is stored exactly as received (same transfer syntax, no decoding) through
  :func:`remote_dx.ingest.instance.file_instance`; success 0x0000 is answered only once that
  returns, i.e. once the bytes are durable and the index row is committed.
* Failure statuses (PS3.4 B.2.3): 0xA700 "Refused: out of resources" when the object store or the
  database is down (the modality retries later); 0xC000 "Cannot understand" for a corrupt,
  truncated or UID-less dataset; 0x0110 "Processing failure" (PS3.7 C.4) for anything unforeseen.
  Every failure carries an Error Comment; the receiver never stops serving.
* Security (issue 7): a device may be bound to source addresses (IPs or CIDR networks); an
  association from elsewhere is rejected and logged. Per-device limits keep one broken modality
  from starving the others: beyond its concurrent associations A-ASSOCIATE-RJ "rejected-
  transient / local limit exceeded" (PS3.8 Table 9-21, source 3 reason 2), beyond its instances
  per second C-STORE 0xA700, both of which the sender retries. With ``RDX_DICOM_TLS_CERT``/
  ``_KEY`` the receiver speaks TLS (PS3.15 B.1), with ``RDX_DICOM_TLS_CA`` it requires client
  certificates signed by that CA.
* Query/Retrieve (PS3.4 Annex C): C-FIND, C-GET and C-MOVE on the same AE, answered from the
  index and the object store and scoped to the calling AE's institution
  (:mod:`remote_dx.ingest.query_retrieve`).
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import signal
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from remote_dx.core import audit as audit_chain
from remote_dx.core.db import get_sessionmaker
from remote_dx.core.errors import (
    DatabaseUnavailable,
    InvalidInstance,
    StorageUnavailable,
)
from remote_dx.core.heap import freeze_startup_heap
from remote_dx.core.models import Device
from remote_dx.core.settings import Settings
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.ingest.presentation import supported_contexts
from remote_dx.ingest.query_retrieve import QueryRetrieveSCP, supported_qr_contexts
from remote_dx.ingest.transport import (
    MAX_PDU_SIZE,
    FastRequestHandler,
    ReceiverServer,
    ReuseportServer,
    set_tcp_nodelay,
)
from remote_dx.ops.logging import configure_logging
from remote_dx.ops.metrics import instrument_store
from remote_dx.storage.base import ObjectStore
from remote_dx.storage.factory import get_store

log = logging.getLogger(__name__)

# C-STORE response statuses (PS3.4 Table B.2-1, PS3.7 Annex C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21).
_REJECTED_PERMANENT, _REJECTED_TRANSIENT = 0x01, 0x02
_SOURCE_SERVICE_USER = 0x01
_SOURCE_PRESENTATION = 0x03  # service-provider (presentation related function)
_NO_REASON, _CALLING_AE_NOT_RECOGNISED = 0x01, 0x03
_LOCAL_LIMIT_EXCEEDED = 0x02  # with _SOURCE_PRESENTATION

_ERROR_COMMENT_MAX = 64  # (0000,0902) is LO


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Admission:
    """What the receiver needs to admit a device: who it is and its security settings."""

    sender: Sender
    allowed_networks: tuple[Network, ...] = ()  # empty: any source address
    max_associations: int = 0  # 0: no limit of its own
    max_instances_per_second: float = 0.0  # 0: no limit

    def allows(self, address: str) -> bool:
        if not self.allowed_networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowed_networks)

    @classmethod
    def of(cls, device: Device, settings: Settings | None = None) -> Admission:
        networks = []
        for entry in device.allowed_addresses or []:
            try:
                networks.append(ipaddress.ip_network(str(entry), strict=False))
            except ValueError:  # a bad entry must not open the door: it matches nothing
                log.error("device %s: ignoring bad allowed address %r", device.ae_title, entry)
        if device.allowed_addresses and not networks:
            networks.append(ipaddress.ip_network("0.0.0.0/32"))  # nothing valid: nobody
        default_assocs = settings.dicom_device_max_associations if settings else 0
        default_rate = settings.dicom_device_max_instances_per_second if settings else 0.0
        return cls(
            sender=Sender.of(device),
            allowed_networks=tuple(networks),
            max_associations=device.max_associations or default_assocs or 0,
            max_instances_per_second=device.max_instances_per_second or default_rate or 0.0,
        )


class DeviceDirectory:
    """Calling AE title → :class:`Admission` (sender + security settings), from the devices table.

    The database is asked on every association request (one indexed row; devices may be added
    or disabled while the receiver runs). When the database cannot be reached, the last answer
    seen for that AE title is used, so a known modality can still associate and receive the
    proper 0xA700 per instance rather than a rejected association.
    """

    def __init__(self, sessions: sessionmaker[Session], settings: Settings | None = None) -> None:
        self._sessions = sessions
        self._settings = settings
        self._known: dict[str, Admission] = {}
        self._lock = threading.Lock()

    def lookup(self, ae_title: str) -> Sender | None:
        """The registered, enabled device with this AE title, or None."""
        admission = self.admission(ae_title)
        return None if admission is None else admission.sender

    def admission(self, ae_title: str) -> Admission | None:
        """The registered, enabled device with this AE title and its settings, or None.

        Raises DatabaseUnavailable when the database is down and the AE title was never seen.
        """
        try:
            with self._sessions() as session:
                device = session.scalar(
                    select(Device)
                    .options(joinedload(Device.institution))
                    .where(Device.ae_title == ae_title, Device.enabled.is_(True))
                )
                sender = Admission.of(device, self._settings) if device is not None else None
        except SQLAlchemyError as exc:
            with self._lock:
                cached = self._known.get(ae_title)
            if cached is None:
                raise DatabaseUnavailable(str(exc)) from exc
            log.warning("device lookup failed, using last known entry for %s: %s", ae_title, exc)
            return cached
        with self._lock:
            if sender is None:
                self._known.pop(ae_title, None)
            else:
                self._known[ae_title] = sender
        return sender


@dataclass
class _Peer:
    """What one association knows about its sender, plus counts for the closing log line."""

    sender: Sender
    address: str
    admission: Admission | None = None
    stored: int = 0
    failed: int = 0
    ended: str = "closed"
    started: float = field(default_factory=time.monotonic)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment.replace("\\", "/")[:_ERROR_COMMENT_MAX]
    return status


class StorageSCP:
    """The event handlers of one receiver; association state is kept per association."""

    def __init__(
        self,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        directory: DeviceDirectory,
        ae_title: str = "REMOTE_DX",
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.directory = directory
        self._peers: weakref.WeakKeyDictionary[Association, _Peer] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._rates = RateLimiter()
        self.query_retrieve = QueryRetrieveSCP(
            store, sessions, self.institution_of, lambda: ae_title, audit=self.audit
        )

    def handlers(self) -> list[tuple[evt.EventType, object]]:
        return [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, instrument_store(self.on_store)),  # rdx_cstore_* metrics
            (evt.EVT_C_FIND, self.query_retrieve.on_find),
            (evt.EVT_C_GET, self.query_retrieve.on_get),
            (evt.EVT_C_MOVE, self.query_retrieve.on_move),
            (evt.EVT_RELEASED, self.on_ended),
            (evt.EVT_ABORTED, self.on_ended),
            (evt.EVT_CONN_CLOSE, self.on_closed),
        ]

    def peer(self, assoc: Association) -> _Peer | None:
        with self._lock:
            return self._peers.get(assoc)

    def institution_of(self, assoc: Association) -> int | None:
        """The calling AE's institution (Query/Retrieve scoping); None for no registered peer."""
        peer = self.peer(assoc)
        return None if peer is None else peer.sender.institution_id

    def audit(self, event: Event, action: str, fields: dict[str, Any]) -> None:
        """One audit-trail record (IHE ATNA) for a DICOM read: the device is the participant."""
        peer = self.peer(event.assoc)
        if peer is None:
            return
        audit_chain.append(
            self.sessions,
            audit_chain.AuditEvent(
                action=action,
                username=peer.sender.ae_title,
                role="dicom-node",
                institution=peer.sender.institution_code,
                client_address=str(event.assoc.requestor.address),
                **fields,
            ),
        )

    # -- association ----------------------------------------------------------------------

    def on_requested(self, event: Event) -> None:
        """EVT_REQUESTED: accept only registered devices (before any context negotiation)."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = f"{assoc.requestor.address}:{assoc.requestor.port}"
        try:
            admission = self.directory.admission(calling)
        except Exception as exc:  # an exception left here would accept the association
            log.error("association from %r (%s) refused for now: %s", calling, address, exc)
            _reject(assoc, _REJECTED_TRANSIENT, _NO_REASON)
            return
        if admission is None:
            log.warning(
                "association from %r (%s) rejected: calling AE title not recognised",
                calling,
                address,
            )
            _reject(assoc, _REJECTED_PERMANENT, _CALLING_AE_NOT_RECOGNISED)
            return
        if not admission.allows(str(assoc.requestor.address)):
            # PS3.8 has no "address not allowed" reason: this AE title is not recognised here.
            log.warning(
                "association from %r (%s) rejected: source address not allowed for this device",
                calling,
                address,
            )
            _reject(assoc, _REJECTED_PERMANENT, _CALLING_AE_NOT_RECOGNISED)
            return
        with self._lock:
            limit = admission.max_associations
            if limit and sum(p.sender.ae_title == calling for p in self._peers.values()) >= limit:
                over = True
            else:
                over = False
                self._peers[assoc] = _Peer(
                    sender=admission.sender, address=address, admission=admission
                )
        if over:
            log.warning(
                "association from %r (%s) rejected for now: its limit is %d associations",
                calling,
                address,
                admission.max_associations,
            )
            _reject(assoc, _REJECTED_TRANSIENT, _LOCAL_LIMIT_EXCEEDED, source=_SOURCE_PRESENTATION)

    def on_established(self, event: Event) -> None:
        peer = self.peer(event.assoc)
        if peer is not None:
            log.info(
                "association from %s (%s) accepted, %d presentation contexts",
                peer.sender.ae_title,
                peer.address,
                len(event.assoc.accepted_contexts),
            )

    def on_ended(self, event: Event) -> None:
        peer = self.peer(event.assoc)
        if peer is not None:
            peer.ended = "released" if event.event is evt.EVT_RELEASED else "aborted"

    def on_closed(self, event: Event) -> None:
        with self._lock:
            peer = self._peers.pop(event.assoc, None)
        if peer is not None:
            log.info(
                "association from %s %s after %.1f s: %d stored, %d failed",
                peer.sender.ae_title,
                peer.ended,
                time.monotonic() - peer.started,
                peer.stored,
                peer.failed,
            )

    # -- DIMSE ----------------------------------------------------------------------------

    def on_echo(self, event: Event) -> int:
        return SUCCESS

    def on_store(self, event: Event) -> int | Dataset:
        """EVT_C_STORE: file the instance as received; answer only when it is durable."""
        peer = self.peer(event.assoc)
        if peer is None:  # cannot happen: on_requested rejects associations without a sender
            return _status(PROCESSING_FAILURE, "association has no registered sender")
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        rate = peer.admission.max_instances_per_second if peer.admission else 0.0
        if rate and not self._rates.take(peer.sender.ae_title, rate):
            peer.failed += 1
            log.warning(
                "C-STORE %s from %s refused: over %g instances/s",
                sop_uid,
                peer.sender.ae_title,
                rate,
            )
            return _status(OUT_OF_RESOURCES, f"rate limit {rate:g} instances/s, retry later")
        try:
            data = part10_bytes(event, peer.sender.ae_title)
            filed = file_instance(
                data, store=self.store, sessions=self.sessions, sender=peer.sender
            )
        except InvalidInstance as exc:
            peer.failed += 1
            log.warning("C-STORE %s from %s: invalid: %s", sop_uid, peer.sender.ae_title, exc)
            return _status(CANNOT_UNDERSTAND, f"invalid instance: {exc}")
        except (StorageUnavailable, DatabaseUnavailable, SQLAlchemyError) as exc:
            peer.failed += 1
            what = "database" if not isinstance(exc, StorageUnavailable) else "storage"
            log.error(
                "C-STORE %s from %s: %s unavailable: %s", sop_uid, peer.sender.ae_title, what, exc
            )
            return _status(OUT_OF_RESOURCES, f"{what} unavailable, retry later")
        except Exception as exc:
            peer.failed += 1
            log.exception("C-STORE %s from %s: unexpected failure", sop_uid, peer.sender.ae_title)
            return _status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        peer.stored += 1
        log.debug(
            "C-STORE %s from %s stored%s",
            filed.sop_instance_uid,
            peer.sender.ae_title,
            " (duplicate)" if filed.duplicate else "",
        )
        return SUCCESS


def part10_bytes(event: Event, source_ae: str) -> bytes:
    """The received data set as a Part 10 file (PS3.10 §7.1), without decoding it.

    The file meta comes from the C-STORE request and the accepted presentation context; the
    data set bytes are kept exactly as they arrived (deflated, encapsulated or not).
    """
    request = event.request
    header = file_meta_bytes(
        str(request.AffectedSOPClassUID),
        str(request.AffectedSOPInstanceUID),
        str(event.context.transfer_syntax),
        source_ae,
    )
    stream = request.DataSet
    # The receiver's C-STORE reader makes the BytesIO from one bytes object, which getvalue()
    # returns as is (getbuffer() would copy it first to unshare it).
    payload = stream.getvalue() if hasattr(stream, "getvalue") else stream.read()
    return b"".join((header, payload))


def file_meta_bytes(
    sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 §7.1), encoded directly.

    The same bytes pydicom's ``write_file_meta_info`` makes from pynetdicom's ``event.file_meta``
    plus (0002,0016) Source Application Entity Title, at ~10 µs instead of ~0.4 ms.
    """
    body = b"".join(
        (
            b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",  # (0002,0001) version 00 01
            _meta_element(0x0002, b"UI", sop_class.encode(), b"\0"),
            _meta_element(0x0003, b"UI", sop_instance.encode(), b"\0"),
            _meta_element(0x0010, b"UI", transfer_syntax.encode(), b"\0"),
            _IMPLEMENTATION,
            _meta_element(0x0016, b"AE", source_ae.encode("ascii", "replace"), b" "),
        )
    )
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + len(body).to_bytes(4, "little")
    return _PREAMBLE + group_length + body


def _meta_element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return (
        b"\x02\x00" + element.to_bytes(2, "little") + vr + len(value).to_bytes(2, "little") + value
    )


_PREAMBLE = b"\x00" * 128 + b"DICM"
_IMPLEMENTATION = _meta_element(
    0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode(), b"\0"
) + _meta_element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode(), b" ")


class RateLimiter:
    """Token buckets per AE title: ``rate`` tokens a second, at most one second's worth banked.

    Shared by all associations of a receiver process, so a device cannot dodge its limit by
    opening more associations (that is capped separately).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # ae → (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key: str, rate: float) -> bool:
        """Take one token if there is one; False means over the limit."""
        now = self._clock()
        burst = max(1.0, rate)
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


def _reject(
    assoc: Association, result: int, diagnostic: int, *, source: int = _SOURCE_SERVICE_USER
) -> None:
    """Send A-ASSOCIATE-RJ from an EVT_REQUESTED handler, as pynetdicom's own ACSE does."""
    assoc.acse.send_reject(result, source, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


@dataclass
class Receiver:
    """A running receiver; :meth:`stop` shuts it down."""

    ae: AE
    server: ThreadedAssociationServer
    scp: StorageSCP

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    @property
    def active_associations(self) -> list[Association]:
        return self.server.active_associations

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let running associations finish for up to ``timeout`` s, abort the rest.

        An aborted association's unanswered instance is simply re-sent by the modality.
        """
        self.server.shutdown()
        deadline = time.monotonic() + timeout
        while self.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.server.active_associations:
            assoc.abort()
        self.ae.shutdown()
        log.info("DICOM receiver %s stopped", self.ae.ae_title)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def make_ae(settings: Settings) -> AE:
    """The receiver's AE: Verification, every storage SOP class (as SCP, and as SCU for C-GET
    sub-operations), and Query/Retrieve Find/Get/Move in the Study and Patient Root models."""
    ae = AE(ae_title=settings.ae_title)
    contexts = supported_contexts() + supported_qr_contexts()
    ae.supported_contexts = contexts
    # pynetdicom's setter keeps abstract and transfer syntaxes only: restore the roles.
    roles = {context.abstract_syntax: (context.scu_role, context.scp_role) for context in contexts}
    for context in ae.supported_contexts:
        context.scu_role, context.scp_role = roles[context.abstract_syntax]
    ae.maximum_associations = settings.dicom_max_associations
    ae.maximum_pdu_size = MAX_PDU_SIZE
    # Modalities are often configured with a generic called AE title; the calling AE title is
    # what identifies (and authorises) the sender.
    ae.require_called_aet = False
    return ae


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the receiver (PS3.15 B.1 Basic TLS Secure Transport) when a certificate is set.

    TLS 1.2 or later. With ``dicom_tls_ca`` the peer must present a certificate signed by it
    (the BCP 195 profiles' mutual authentication); without, any client may connect and the AE
    title / address checks still apply. The handshake is left to the association's thread
    (first read) so a slow or broken client cannot hold up the acceptor.
    """
    if settings.dicom_tls_cert is None:
        return None
    if settings.dicom_tls_key is None:
        raise ValueError("RDX_DICOM_TLS_CERT needs RDX_DICOM_TLS_KEY")
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.dicom_tls_cert), str(settings.dicom_tls_key))
    if settings.dicom_tls_ca is not None:
        context.load_verify_locations(cafile=str(settings.dicom_tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _DeferredHandshakeContext(ssl.SSLContext):
    """pynetdicom wraps accepted sockets in the acceptor thread; handshake later, not there."""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def _serve(
    ae: AE,
    settings: Settings,
    scp: StorageSCP,
    *,
    reuse_port: bool,
    channel: socket.socket | None = None,
) -> ThreadedAssociationServer:
    """What ``AE.start_server(block=False)`` does, with our server and request handler classes.

    With ``channel`` the server listens on no port: it serves the connections an
    :class:`~remote_dx.ingest.transport.AssociationDispatcher` passes over that Unix socket.
    """
    from remote_dx.ingest.transport import passed_connection_server

    server_class: type[ReceiverServer]
    if channel is not None:
        server_class = passed_connection_server(channel)
    else:
        server_class = ReuseportServer if reuse_port else ReceiverServer
    server = ae.make_server(
        (settings.dicom_host, settings.dicom_port),
        evt_handlers=scp.handlers(),  # type: ignore[arg-type]
        ssl_context=server_ssl_context(settings),  # None unless RDX_DICOM_TLS_CERT is set
        server_class=server_class,
        request_handler=FastRequestHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)  # so AE.shutdown() stops it, as for AE.start_server
    return server


def start_receiver(
    settings: Settings,
    *,
    store: ObjectStore | None = None,
    sessions: sessionmaker[Session] | None = None,
    reuse_port: bool = False,
    channel: socket.socket | None = None,
) -> Receiver:
    """Start the receiver in background threads and return at once (the schema must exist).

    ``reuse_port`` lets several receiver processes listen on the same port (SO_REUSEPORT);
    ``channel`` makes this a receiver process of :func:`run_receiver` that takes its
    connections from the dispatcher instead of a port.
    """
    sessions = sessions or get_sessionmaker(settings)
    store = store or get_store(settings)
    _warm_up(store)
    scp = StorageSCP(
        store,
        sessions,
        DeviceDirectory(sessions, settings),
        ae_title=settings.ae_title,
    )
    ae = make_ae(settings)
    server = _serve(ae, settings, scp, reuse_port=reuse_port, channel=channel)
    receiver = Receiver(ae=ae, server=server, scp=scp)
    log.info(
        "DICOM receiver %s listening on %s:%d (max %d associations%s)",
        settings.ae_title,
        receiver.host,
        receiver.port,
        settings.dicom_max_associations,
        ", port shared" if reuse_port or channel is not None else "",
    )
    return receiver


def _warm_up(store: ObjectStore) -> None:
    """One-time set-up done before the first association rather than inside its first C-STORE:
    the file store's shard directories and the helper thread that flushes objects."""
    from remote_dx.ingest.instance import start_io_pool

    prepare = getattr(store, "prepare", None)
    if prepare is not None:
        try:
            prepare()
        except Exception as exc:  # the store may be down now; C-STORE answers 0xA700 then
            log.warning("object store not ready at start: %s", exc)
    start_io_pool()
    # pydicom compiles its UI regular expression at the first UID it validates; on a busy
    # machine that stalled the first association's negotiation for a noticeable time.
    from pynetdicom.utils import set_uid

    set_uid("1.2.840.10008.1.1", "warm-up", False, False, True)


def run_receiver(settings: Settings, processes: int = 1) -> None:
    """Run the receiver in the foreground until Ctrl-C or SIGTERM (``remote-dx scp``).

    With ``processes`` > 1 this process only accepts connections on the DICOM port and hands
    each, as a file descriptor, to the one of ``processes`` receiver processes that has the
    fewest open associations (:class:`~remote_dx.ingest.transport.AssociationDispatcher`), so
    parsing and filing of parallel associations are spread over the cores despite the GIL.
    SO_REUSEPORT, tried first, let the kernel pick by a hash of the addresses and often put
    three of four associations on one process. Receiver processes that die are started
    again; SIGTERM stops them all after their associations end (up to 10 s).
    """
    _configure_logging(settings)
    if processes <= 1:
        receiver = start_receiver(settings)
        freeze_startup_heap()
        _serve_until_stopped(receiver)
        return
    from remote_dx.ingest.transport import AssociationDispatcher

    dispatcher = AssociationDispatcher((settings.dicom_host, settings.dicom_port))
    # The receivers report the port this process got (it may have asked for port 0).
    child_settings = settings.model_copy(update={"dicom_port": dispatcher.address[1]})
    context = multiprocessing.get_context("spawn")

    def spawn() -> tuple[BaseProcess, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child = context.Process(
            target=_receiver_process,
            args=(child_settings, theirs),
            name="remote-dx-scp",
            daemon=False,
        )
        child.start()
        theirs.close()
        return child, ours

    children: list[BaseProcess] = []
    for _ in range(processes):
        child, channel = spawn()
        children.append(child)
        dispatcher.add(channel)
    dispatcher.start()
    log.info(
        "DICOM receiver %s accepting on %s:%d for %d receiver processes",
        settings.ae_title,
        *dispatcher.address,
        processes,
    )
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(1.0):
            for index, child in enumerate(children):
                if not child.is_alive():
                    log.error(
                        "receiver process %s exited with %s; starting another",
                        child.pid,
                        child.exitcode,
                    )
                    children[index], channel = spawn()
                    dispatcher.replace(index, channel)
    except KeyboardInterrupt:
        pass
    finally:
        dispatcher.stop()  # no new associations; the children's channels close
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: each finishes its associations like `remote-dx scp`
        for child in children:
            child.join(timeout=15.0)
            if child.is_alive():
                child.kill()
                child.join()


def _receiver_process(settings: Settings, channel: socket.socket) -> None:
    """A child of :func:`run_receiver`: a receiver serving the connections passed to it."""
    _configure_logging(settings)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    receiver = start_receiver(settings, channel=channel)
    freeze_startup_heap()  # before it tells the dispatcher it is ready
    ready = getattr(receiver.server, "ready", None)
    if ready is not None:
        ready()
    _serve_until_stopped(receiver)


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)  # RDX_LOG_FORMAT=json
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        )
    # pynetdicom narrates every PDU at INFO; our own lines say what matters.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _serve_until_stopped(receiver: Receiver) -> None:
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop(timeout=10.0)
