"""Loading a medical-community network (institutions, devices, users) from YAML.

The demo network (``sample_studies/demo_network.yaml``) is the Xixia county community of our
reference material; real deployments describe theirs in the same format. Loading is idempotent:
rows are matched by institution code, AE title and username and updated in place.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.models import Device, Institution, InstitutionLevel, Role, User
from remote_dx.core.security import hash_password


class NetworkFileError(ValueError):
    """The network file is malformed; the message names the offending entry."""


#: Modality recorded for a ``nodes`` entry (a PACS or workstation, not an acquisition device).
NODE_MODALITY = "PACS"


def _apply_dicom_node(device: Device, entry: dict[str, Any]) -> None:
    """The optional DICOM settings of a device entry: listening address and receiver limits.

    ``host``/``port`` make the AE a C-MOVE destination; ``allowed_addresses`` (IP addresses or
    CIDR networks) restricts where it may associate from; ``max_associations`` and
    ``max_instances_per_second`` cap its share of the receiver.
    """
    port = entry.get("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"port {port} out of range")
    device.host = entry.get("host")
    device.port = None if port is None else int(port)
    if (device.host is None) != (device.port is None):
        raise ValueError("host and port go together")
    allowed = entry.get("allowed_addresses")
    if allowed is not None:
        if isinstance(allowed, str):
            allowed = [allowed]
        for address in allowed:
            ipaddress.ip_network(str(address), strict=False)  # ValueError names the bad one
        allowed = [str(address) for address in allowed]
    device.allowed_addresses = allowed or None
    limit = entry.get("max_associations")
    device.max_associations = None if limit is None else int(limit)
    rate = entry.get("max_instances_per_second")
    device.max_instances_per_second = None if rate is None else float(rate)
    if limit is not None and int(limit) < 1:
        raise ValueError("max_associations must be at least 1")
    if rate is not None and float(rate) <= 0:
        raise ValueError("max_instances_per_second must be positive")


def load_network_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise NetworkFileError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise NetworkFileError(f"{path}: expected a mapping at top level")
    return data


def apply_network(session: Session, data: dict[str, Any], *, with_passwords: bool) -> None:
    """Create or update the institutions, devices and users described in ``data``.

    ``with_passwords`` sets the users' passwords from the file; only demo mode does that, so a
    real deployment never ships a known password.
    """
    by_code: dict[str, Institution] = {
        inst.code: inst for inst in session.scalars(select(Institution))
    }
    for entry in data.get("institutions", []):
        try:
            code = entry["code"]
            inst = by_code.get(code) or Institution(code=code)
            inst.name = entry["name"]
            inst.name_en = entry.get("name_en")
            inst.level = InstitutionLevel(entry["level"])
            parent = entry.get("parent")
            if parent is not None and parent not in by_code:
                raise NetworkFileError(f"institution {code}: unknown parent {parent!r}")
            inst.parent = by_code[parent] if parent else None
            inst.return_ae_title = entry.get("return_ae_title")
            inst.return_host = entry.get("return_host")
            inst.return_port = entry.get("return_port")
        except (KeyError, ValueError) as exc:
            raise NetworkFileError(f"institution {entry!r}: {exc}") from exc
        session.add(inst)
        by_code[code] = inst
    session.flush()

    devices = {d.ae_title: d for d in session.scalars(select(Device))}
    # ``nodes`` are DICOM applications that query and retrieve rather than acquire (a county
    # PACS, a reading workstation); they are devices whose modality defaults to "PACS".
    entries = [(entry, None) for entry in data.get("devices", [])]
    entries += [(entry, NODE_MODALITY) for entry in data.get("nodes", [])]
    for entry, default_modality in entries:
        try:
            ae = entry["ae_title"]
            if len(ae) > 16:
                raise NetworkFileError(f"device {ae}: AE titles have at most 16 characters")
            device = devices.get(ae) or Device(ae_title=ae)
            device.name = entry.get("name", ae)
            device.modality = entry.get("modality", default_modality) or entry["modality"]
            device.institution = by_code[entry["institution"]]
            device.enabled = entry.get("enabled", True)
            _apply_dicom_node(device, entry)
        except KeyError as exc:
            raise NetworkFileError(f"device {entry!r}: missing or unknown {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise NetworkFileError(f"device {entry!r}: {exc}") from exc
        session.add(device)
        devices[ae] = device

    users = {u.username: u for u in session.scalars(select(User))}
    for entry in data.get("users", []):
        try:
            username = entry["username"]
            user = users.get(username)
            if user is None:
                user = User(username=username, password_hash="!")
            user.full_name = entry.get("full_name", username)
            user.role = Role(entry["role"])
            user.institution = by_code[entry["institution"]]
            user.modalities = list(entry.get("modalities", []))
            user.title = entry.get("title")
            user.sections = list(entry.get("sections", []))
            user.active = entry.get("active", True)
            if with_passwords and "password" in entry:
                user.password_hash = hash_password(str(entry["password"]))
        except (KeyError, ValueError) as exc:
            raise NetworkFileError(f"user {entry!r}: missing or invalid {exc}") from exc
        session.add(user)
    session.flush()
