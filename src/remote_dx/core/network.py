"""Loading a medical-community network (institutions, devices, users) from YAML.

The demo network (``sample_studies/demo_network.yaml``) is the Xixia county community of our
reference material; real deployments describe theirs in the same format. Loading is idempotent:
rows are matched by institution code, AE title and username and updated in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.models import Device, Institution, InstitutionLevel, Role, User
from remote_dx.core.security import hash_password


class NetworkFileError(ValueError):
    """The network file is malformed; the message names the offending entry."""


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
    for entry in data.get("devices", []):
        try:
            ae = entry["ae_title"]
            if len(ae) > 16:
                raise NetworkFileError(f"device {ae}: AE titles have at most 16 characters")
            device = devices.get(ae) or Device(ae_title=ae)
            device.name = entry.get("name", ae)
            device.modality = entry["modality"]
            device.institution = by_code[entry["institution"]]
            device.enabled = entry.get("enabled", True)
        except KeyError as exc:
            raise NetworkFileError(f"device {entry!r}: missing or unknown {exc}") from exc
        session.add(device)

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
