"""DICOM security on the receiver (issue 7): source-address allow-list, per-device limits, TLS.

The limits keep one broken modality from starving the others: over its concurrent associations
it is rejected "transient / local limit exceeded" (PS3.8 Table 9-21), over its instance rate its
C-STOREs get 0xA700 — both retryable — while other devices are served as usual. TLS is checked
with dcmtk's ``storescu +tls`` against certificates made here with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.models import Device
from remote_dx.core.network import NetworkFileError, apply_network
from remote_dx.core.settings import Settings
from remote_dx.ingest.dicom_scp import (
    Admission,
    RateLimiter,
    Receiver,
    server_ssl_context,
    start_receiver,
)
from remote_dx.ingest.instance import Sender
from tests.test_dicom_scp import (
    CALLED,
    CALLING,
    c_store,
    count_instances,
    dcmtk_tool,
    echo,
    make_copy,
)


def _set_device(db: sessionmaker[Session], ae_title: str, **values: object) -> None:
    with db() as session, session.begin():
        device = session.scalar(select(Device).where(Device.ae_title == ae_title))
        for name, value in values.items():
            setattr(device, name, value)


@pytest.fixture
def receiver(settings: Settings, db: sessionmaker[Session]) -> Iterator[Receiver]:
    running = start_receiver(settings)
    yield running
    running.stop(timeout=1)


# -- source addresses -------------------------------------------------------------------------


def test_association_from_an_address_not_allowed_is_rejected_and_logged(
    receiver: Receiver, db: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    _set_device(db, CALLING, allowed_addresses=["10.20.30.0/24"])
    with caplog.at_level(logging.WARNING, logger="remote_dx.ingest.dicom_scp"):
        assert not echo(receiver.port)
    assert any("source address not allowed" in r.getMessage() for r in caplog.records)
    assert echo(receiver.port, calling="DINGHE_DR")  # devices without a list: any address

    _set_device(db, CALLING, allowed_addresses=["10.20.30.40", "127.0.0.0/8"])
    assert echo(receiver.port)


def test_admission_address_matching() -> None:
    sender = Sender(1, 1, "XIPING", CALLING)
    nets = tuple(ipaddress.ip_network(n) for n in ("192.168.5.0/24", "2001:db8::/32"))
    admission = Admission(sender, allowed_networks=nets)
    assert admission.allows("192.168.5.17")
    assert admission.allows("::ffff:192.168.5.17")  # IPv4-mapped on a dual-stack socket
    assert admission.allows("2001:db8::1")
    assert not admission.allows("192.168.6.1")
    assert not admission.allows("not-an-address")
    assert Admission(sender).allows("203.0.113.9")  # no list: any address


def test_network_file_validates_node_settings(db: sessionmaker[Session]) -> None:
    base = {"institutions": [], "users": []}
    bad = [
        {
            "ae_title": "X1",
            "institution": "XIPING",
            "modality": "DX",
            "allowed_addresses": ["nope"],
        },
        {"ae_title": "X2", "institution": "XIPING", "host": "127.0.0.1"},  # a node without port
        {"ae_title": "X3", "institution": "XIPING", "modality": "DX", "max_associations": 0},
    ]
    for entry in bad:
        with db() as session, pytest.raises(NetworkFileError):
            apply_network(session, {**base, "nodes": [entry]}, with_passwords=False)
    with db() as session, session.begin():
        apply_network(
            session,
            {**base, "nodes": [{
                "ae_title": "WS1", "institution": "XXXRMYY", "host": "h", "port": 104,
                "allowed_addresses": "10.0.0.0/8", "max_instances_per_second": 5,
            }]},
            with_passwords=False,
        )  # fmt: skip
    with db() as session:
        node = session.scalar(select(Device).where(Device.ae_title == "WS1"))
        assert (node.modality, node.host, node.port) == ("PACS", "h", 104)
        assert node.allowed_addresses == ["10.0.0.0/8"]
        assert node.max_instances_per_second == 5.0


# -- per-device limits ------------------------------------------------------------------------


def test_concurrent_association_limit_rejects_transient_and_spares_other_devices(
    dcmtk: str, receiver: Receiver, db: sessionmaker[Session], tmp_path: Path
) -> None:
    _set_device(db, CALLING, max_associations=1)
    first_ae = AE(ae_title=CALLING)
    first_ae.add_requested_context("1.2.840.10008.1.1")
    first = first_ae.associate("127.0.0.1", receiver.port, ae_title=CALLED)
    assert first.is_established
    try:
        second_ae = AE(ae_title=CALLING)
        second_ae.add_requested_context("1.2.840.10008.1.1")
        second = second_ae.associate("127.0.0.1", receiver.port, ae_title=CALLED)
        assert second.is_rejected
        rj = second.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        second_ae.shutdown()

        ct = make_copy("CT_small.dcm", tmp_path)
        run = dcmtk_tool("storescu", "-aet", CALLING, "-aec", CALLED, "127.0.0.1",
                         str(receiver.port), ct)  # fmt: skip
        assert run.returncode != 0
        assert "Local Limit Exceeded" in run.stderr
        # Another device is served while this one is at its limit.
        assert c_store(receiver.port, [ct], calling="DINGHE_DR") == [0x0000]
    finally:
        first.release()
        first_ae.shutdown()
    assert echo(receiver.port)  # the slot is free again


def test_instance_rate_limit_answers_a700_and_spares_other_devices(
    receiver: Receiver, db: sessionmaker[Session], tmp_path: Path
) -> None:
    # One instance every 10 s: the first goes through, the next ones in the same burst do not.
    _set_device(db, CALLING, max_instances_per_second=0.1)
    study = generate_uid()
    files = [make_copy("CT_small.dcm", tmp_path, study_uid=study) for _ in range(4)]
    statuses = c_store(receiver.port, files)
    assert statuses[0] == 0x0000
    assert statuses[1:] == [0xA700] * 3
    assert count_instances(db) == 1
    others = [make_copy("CT_small.dcm", tmp_path) for _ in range(3)]
    assert c_store(receiver.port, others, calling="DINGHE_DR") == [0x0000] * 3


def test_rate_limiter_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("A", 2.0) for _ in range(3)] == [True, True, False]  # 1 s burst
    assert limiter.take("B", 2.0)  # per device
    now[0] += 0.5
    assert limiter.take("A", 2.0)
    assert not limiter.take("A", 2.0)
    now[0] += 60
    assert [limiter.take("A", 2.0) for _ in range(3)] == [True, True, False]  # never > burst


# -- TLS --------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    folder: Path,
    stem: str,
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A test CA, the receiver's certificate and a modality's, plus a stranger's self-signed one."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = _issue(folder, "ca", "remote_dx test CA", None, ca=True)
    _issue(folder, "server", "localhost", ca)
    _issue(folder, "client", CALLING, ca)
    _issue(folder, "stranger", "stranger", None)
    return folder


def test_storescu_over_tls_with_client_certificates(
    dcmtk: str, settings: Settings, db: sessionmaker[Session], pki: Path, tmp_path: Path
) -> None:
    tls = settings.model_copy(
        update={
            "dicom_tls_cert": pki / "server.crt",
            "dicom_tls_key": pki / "server.key",
            "dicom_tls_ca": pki / "ca.crt",
        }
    )
    receiver = start_receiver(tls)
    port = str(receiver.port)
    try:
        ct = make_copy("CT_small.dcm", tmp_path)
        ok = dcmtk_tool(
            "storescu", "+tls", pki / "client.key", pki / "client.crt", "+cf", pki / "ca.crt",
            "-aet", CALLING, "-aec", CALLED, "127.0.0.1", port, ct,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert count_instances(db) == 1

        # Plain TCP to the TLS port: no association.
        plain = dcmtk_tool("storescu", "-ta", "5", "-aet", CALLING, "-aec", CALLED, "127.0.0.1",
                           port, make_copy("CT_small.dcm", tmp_path))  # fmt: skip
        assert plain.returncode != 0
        # A certificate the hub's CA did not sign: the handshake fails.
        stranger = dcmtk_tool(
            "storescu", "+tls", pki / "stranger.key", pki / "stranger.crt", "+cf", pki / "ca.crt",
            "-aet", CALLING, "-aec", CALLED, "127.0.0.1", port, make_copy("CT_small.dcm", tmp_path),
        )  # fmt: skip
        assert stranger.returncode != 0
        assert count_instances(db) == 1
        # The AE title check still applies inside TLS.
        nobody = dcmtk_tool(
            "storescu", "+tls", pki / "client.key", pki / "client.crt", "+cf", pki / "ca.crt",
            "-aet", "NOBODY", "-aec", CALLED, "127.0.0.1", port,
            make_copy("CT_small.dcm", tmp_path),
        )  # fmt: skip
        assert nobody.returncode != 0
        assert "Calling AE Title Not Recognized" in nobody.stderr
        # The receiver still serves after the failed handshakes.
        again = dcmtk_tool(
            "storescu", "+tls", pki / "client.key", pki / "client.crt", "+cf", pki / "ca.crt",
            "-aet", CALLING, "-aec", CALLED, "127.0.0.1", port, make_copy("CT_small.dcm", tmp_path),
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert count_instances(db) == 2
    finally:
        receiver.stop(timeout=1)


def test_tls_without_ca_accepts_any_client_and_needs_a_key(
    dcmtk: str, settings: Settings, db: sessionmaker[Session], pki: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="KEY"):
        server_ssl_context(settings.model_copy(update={"dicom_tls_cert": pki / "server.crt"}))
    tls = settings.model_copy(
        update={"dicom_tls_cert": pki / "server.crt", "dicom_tls_key": pki / "server.key"}
    )
    receiver = start_receiver(tls)
    try:
        run = dcmtk_tool(
            "storescu", "+tla", "+cf", pki / "ca.crt", "-aet", CALLING, "-aec", CALLED,
            "127.0.0.1", str(receiver.port), make_copy("CT_small.dcm", tmp_path),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert count_instances(db) == 1
    finally:
        receiver.stop(timeout=1)
