"""``GET /verify/{code}``: anyone holding a printout checks it, without logging in (结果互认).

JSON by default; a small Chinese/English HTML page when the client asks for ``text/html`` (a
phone scanning the report's QR code). It shows the essentials (institution, exam, date,
impression, signer, version, whether the signature holds) and never more patient data than is
needed to match the paper: a masked name (王*东) and a partial ID. Codes are 50 random bits, so
guessing one is hopeless; an unknown code answers 404.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from remote_dx.api.deps import DbSession
from remote_dx.core.clock import to_shanghai
from remote_dx.reporting.keys import ALGORITHM, load_signing_key
from remote_dx.reporting.verify import Verification, verify
from remote_dx.worklist.schemas import iso_utc

router = APIRouter(tags=["verify"])

VALID = "签名有效 / signature valid"
INVALID = "签名无效 / signature NOT valid"
STATUS_ZH = {"preliminary": "初步报告（待审核）", "final": "正式报告", "amended": "已更正报告"}


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "text/html" in accept and "application/json" not in accept.split(",")[0]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _local(value: datetime | None) -> str:
    return to_shanghai(value).strftime("%Y-%m-%d %H:%M") if value else ""


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    html = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:36em;margin:1em auto;padding:0 1em}}
.ok{{color:#176a2c}}.bad{{color:#b00020}}th{{text-align:left;padding-right:1em;vertical-align:top}}
</style></head><body>{body}</body></html>"""
    return HTMLResponse(html, status_code=status_code)


def _html(v: Verification) -> HTMLResponse:
    state = (
        f'<p class="ok"><b>✔ {VALID}</b></p>'
        if v.signature_valid
        else (f'<p class="bad"><b>✘ {INVALID}</b></p>')
    )
    rows = [
        ("诊断机构 / Institution", v.institution),
        ("检查机构 / Taken at", v.origin),
        ("检查 / Exam", f"{v.exam} ({v.modality or ''})"),
        ("检查日期 / Date", v.study_date or ""),
        ("患者 / Patient", f"{v.patient_name}  {v.patient_id}"),
        ("诊断意见 / Impression", v.impression),
        ("签名医师 / Signed by", f"{v.signer} {v.signer_title or ''}".strip()),
        ("签名时间 / Signed at", f"{_local(v.signed_at)} (北京时间)"),
        ("版本 / Version", f"{v.version} / {v.versions} · {STATUS_ZH.get(v.status, v.status)}"),
    ]
    if v.amendment_reason:
        rows.append(("更正原因 / Amended because", v.amendment_reason))
    table = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(x))}</td></tr>" for k, x in rows)
    notes = ""
    if v.withdrawn:
        notes += '<p class="bad"><b>此报告已撤回 / this result was withdrawn</b></p>'
    if v.versions > 1:
        notes += (
            "<p>此报告已更正，以本页所示最新版本为准 / "
            "amended: this page shows the current version.</p>"
        )
    body = (
        f"<h1>报告验证 / Report verification</h1>{state}{notes}<table>{table}</table>"
        f"<p><small>验证码 {escape(v.code)} · key {escape(v.key_id or '')}</small></p>"
    )
    return _page("报告验证", body)


@router.get(
    "/verify/{code}",
    summary="Verify a printed report by its code (no login)",
    responses={
        200: {"content": {"application/json": {}, "text/html": {}}},
        404: {"description": "No signed report has this code"},
    },
    response_model=None,
)
def verify_code(
    code: Annotated[str, Path(min_length=1, max_length=32)], request: Request, session: DbSession
) -> Response:
    key = load_signing_key(request.app.state.settings)
    result = verify(session, code, key)
    if result is None:
        if _wants_html(request):
            return _page("未找到", "<h1>未找到该验证码 / No report has this code</h1>", 404)
        return JSONResponse({"detail": "no signed report has this code"}, status_code=404)
    if _wants_html(request):
        return _html(result)
    body = _jsonable(asdict(result))
    body["signature"] = VALID if result.signature_valid else INVALID
    body["algorithm"] = ALGORITHM
    return JSONResponse(body)


@router.get(
    "/api/v1/report-signing-key",
    summary="The hub's public key, to check report signatures offline (no login)",
)
def public_key(request: Request) -> dict[str, str]:
    key = load_signing_key(request.app.state.settings)
    return {"algorithm": ALGORITHM, "key_id": key.key_id, "public_key_pem": key.public_pem()}
