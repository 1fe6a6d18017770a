"""The simulated medical community: a county lead hospital, its township health centres (each
with a DR and an ECG cart), readers, and the shared city and provincial partners above it.

Built as the same mapping a network file holds and applied with
:func:`remote_dx.core.network.apply_network`, so the rows are exactly what an administrator's
``remote-dx network`` import makes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

PROVINCE_CODE = "SIM-PROV"
CITY_CODE = "SIM-CITY"
DEMO_PASSWORD = "demo"

# Township names of a county in the hills (西峡县 and its neighbours); a county takes the first n.
TOWNSHIPS = (
    "西坪镇",
    "丁河镇",
    "桑坪镇",
    "米坪镇",
    "双龙镇",
    "太平镇",
    "二郎坪镇",
    "五里桥镇",
    "重阳镇",
    "阳城镇",
    "回车镇",
    "丹水镇",
    "田关镇",
    "军马河镇",
    "寨根乡",
    "陈阳坪镇",
    "石界河镇",
    "西簧乡",
)


def county_code(name: str) -> str:
    """A short code for a county named in Chinese (AE titles allow 16 ASCII characters)."""
    return "C" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:4].upper()


@dataclass
class Township:
    code: str
    name: str
    weight: float  # share of the county's exams
    dr_ae: str
    ecg_ae: str
    technician: str


@dataclass
class CountyNetwork:
    name: str
    code: str
    townships: list[Township]
    county_readers: list[str]
    city_readers: list[str]
    province_readers: list[str]
    statistician: str
    data: dict[str, Any] = field(default_factory=dict)


def county_network(
    name: str, code: str | None = None, *, townships: int = 12, weights: list[float] | None = None
) -> CountyNetwork:
    """The network mapping for one county; the city and province entries are shared by name."""
    code = (code or county_code(name)).upper()
    if not code.isalnum() or len(code) > 8:
        raise ValueError(f"county code {code!r}: use at most 8 letters or digits")
    if not 1 <= townships <= len(TOWNSHIPS):
        raise ValueError(f"townships: 1 to {len(TOWNSHIPS)}")
    weights = weights or [1.0] * townships
    lower = code.lower()
    institutions: list[dict[str, Any]] = [
        {"code": PROVINCE_CODE, "name": "省人民医院", "level": "province"},
        {"code": CITY_CODE, "name": "市中心医院", "level": "city", "parent": PROVINCE_CODE},
        {"code": code, "name": f"{name}人民医院", "level": "county", "parent": CITY_CODE},
    ]
    devices: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    towns: list[Township] = []
    for index in range(townships):
        town_code = f"{code}T{index + 1:02d}"
        town_name = f"{TOWNSHIPS[index]}卫生院"
        institutions.append(
            {"code": town_code, "name": town_name, "level": "township", "parent": code}
        )
        dr, ecg = f"{town_code}_DR", f"{town_code}_ECG"
        devices += [
            {"ae_title": dr, "name": f"{town_name} DR", "modality": "DX", "institution": town_code},
            {"ae_title": ecg, "name": f"{town_name} 心电图机", "modality": "ECG",
             "institution": town_code},
        ]  # fmt: skip
        tech = f"{lower}_tech{index + 1:02d}"
        users.append(
            {"username": tech, "full_name": f"{TOWNSHIPS[index]}技师", "role": "technician",
             "institution": town_code, "password": DEMO_PASSWORD}
        )  # fmt: skip
        towns.append(Township(town_code, town_name, weights[index], dr, ecg, tech))

    def reader(username: str, full_name: str, inst: str, title: str, role: str = "reader") -> str:
        users.append(
            {"username": username, "full_name": full_name, "role": role, "institution": inst,
             "modalities": ["DX", "CR", "ECG"], "title": title, "password": DEMO_PASSWORD}
        )  # fmt: skip
        return username

    county_readers = [
        reader(f"{lower}_reader{i}", f"{name}诊断医师{i}", code, title)
        for i, title in ((1, "主治医师"), (2, "主治医师"), (3, "副主任医师"), (4, "住院医师"))
    ]
    city_readers = [reader("sim_city_reader", "市中心医院会诊专家", CITY_CODE, "主任医师")]
    province_readers = [
        reader("sim_province_reader", "省人民医院会诊专家", PROVINCE_CODE, "主任医师")
    ]
    statistician = f"{lower}_stats"
    users.append(
        {"username": statistician, "full_name": f"{name}卫健委统计员", "role": "statistician",
         "institution": code, "password": DEMO_PASSWORD}
    )  # fmt: skip
    return CountyNetwork(
        name=name,
        code=code,
        townships=towns,
        county_readers=county_readers,
        city_readers=city_readers,
        province_readers=province_readers,
        statistician=statistician,
        data={"institutions": institutions, "devices": devices, "users": users},
    )
