"""docs/conformance.md is what the code generates (it cannot drift), and says what matters."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from remote_dx.cli import app as cli_app
from remote_dx.core.settings import Settings
from remote_dx.ingest.conformance import DOCUMENT, conformance_statement
from remote_dx.ingest.dicom_scp import make_ae
from remote_dx.ingest.query_retrieve import FIND_KEYS
from tests.support import ROOT


def test_committed_statement_matches_the_code() -> None:
    committed = (ROOT / DOCUMENT).read_text(encoding="utf-8")
    generated = conformance_statement()
    assert committed == generated, (
        f"{DOCUMENT} is out of date: run `remote-dx conformance > {DOCUMENT}` and commit it"
    )


def test_cli_prints_the_statement_independent_of_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("RDX_AE_TITLE", "SOMEWHERE_ELSE")
    run = CliRunner().invoke(cli_app, ["conformance"])
    assert run.exit_code == 0, run.output
    assert run.output == conformance_statement()
    assert "`REMOTE_DX`" in run.output and "SOMEWHERE_ELSE" not in run.output


def test_statement_lists_every_accepted_context_key_and_dicomweb_route() -> None:
    text = conformance_statement()
    for context in make_ae(Settings.model_construct()).supported_contexts:
        assert f"| {context.abstract_syntax} |" in text, context.abstract_syntax.name
        for syntax in context.transfer_syntax:
            assert f"`{syntax}`" in text
    for key in FIND_KEYS:
        assert f"| {key.keyword} |" in text
    from remote_dx.api.routers.dicomweb import router

    for route in router.routes:
        assert f"`{route.path}`" in text  # type: ignore[attr-defined]
    for setting in ("RDX_DICOM_TLS_CERT", "RDX_DICOM_TLS_KEY", "RDX_DICOM_TLS_CA"):
        assert setting in text
    assert re.search(r"\| Move destination unknown \| 0xA801 \|", text)
