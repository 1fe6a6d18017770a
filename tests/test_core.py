"""Core: migrations, the network file, the file store."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from remote_dx.core import security
from remote_dx.core.models import Device, Institution, InstitutionLevel, User
from remote_dx.core.security import verify_password
from remote_dx.storage import ObjectNotFound
from remote_dx.storage.file_store import FileStore


def test_demo_network_is_a_tree_with_lead_hospital(db) -> None:
    with db() as session:
        xiping = session.scalar(select(Institution).where(Institution.code == "XIPING"))
        assert xiping is not None and xiping.level is InstitutionLevel.TOWNSHIP
        assert xiping.lead_hospital().name == "西峡县人民医院"
        device = session.scalar(select(Device).where(Device.ae_title == "XIPING_ECG"))
        assert device.institution.code == "XIPING"
        reader = session.scalar(select(User).where(User.username == "county_reader"))
        assert verify_password(reader.password_hash, "demo")
        assert not verify_password(reader.password_hash, "wrong")


def test_production_password_hashes_are_argon2id_at_rfc_9106_low_memory_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The suite hashes at the cheapest parameters (conftest); the hub itself must not."""
    monkeypatch.setattr(security, "_hasher", security.PasswordHasher())
    stored = security.hash_password("demo")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert security.verify_password(stored, "demo")
    assert not security.verify_password(stored, "wrong")
    assert not security.verify_password("not a hash", "demo")


def test_file_store_round_trip_and_rejects_escaping_keys(tmp_path) -> None:
    store = FileStore(tmp_path)
    store.put("dicom/1.2/3.4/5.6.dcm", b"DICM")
    assert store.get("dicom/1.2/3.4/5.6.dcm") == b"DICM"
    assert list(store.list("dicom/")) == ["dicom/1.2/3.4/5.6.dcm"]
    with pytest.raises(ObjectNotFound):
        store.get("dicom/none.dcm")
    with pytest.raises(ValueError):
        store.put("../outside", b"x")
    store.delete("dicom/1.2/3.4/5.6.dcm")
    assert not store.exists("dicom/1.2/3.4/5.6.dcm")
