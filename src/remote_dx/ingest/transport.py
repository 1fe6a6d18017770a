"""TCP options for DICOM associations (PS3.8 §9, the TCP/IP upper-layer mapping).

Shared by the receiver and the township-side push client; kept free of database and storage
imports so ``remote-dx push`` starts fast.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt
from pynetdicom.events import Event

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
