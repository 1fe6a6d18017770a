"""The accuracy bench's reference (issue 3 definition) and a regression guard on LUDB intervals.

LUDB: Kalyakulina et al., IEEE Access 8:186181 (2020), PhysioNet. The verdict against the IEC
60601-2-25 tolerances is bench/ecg_accuracy.py on all the held-out even records; the guard here
runs on twenty of them (2–40), so it catches a regression of the delineation on records that
neither chose the rules' constants nor trained the network; it is not the validation itself.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from tests.support import SHARED_DATA

LUDB = SHARED_DATA / "ecg" / "ludb" / "data"
LEADS = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    pytest.importorskip("wfdb")
    if not (LUDB / "1.hea").exists():
        pytest.skip(f"LUDB not found at {LUDB}")
    from bench import ecg_accuracy

    return ecg_accuracy


def _global_qrs_by_hand(record: int) -> float:
    """Median over beats of (latest QRS offset − earliest QRS onset) over the 12 leads, ms,
    straight from the annotation files (an independent reading of the issue's definition)."""
    import wfdb

    marks = []
    for lead in LEADS:
        ann = wfdb.rdann(str(LUDB / str(record)), lead)
        s, c = list(ann.sample), list(ann.symbol)
        marks.append([(s[i - 1], s[i], s[i + 1]) for i in range(1, len(c) - 1) if c[i] == "N"])
    widths = []
    for _, peak, _ in marks[1]:  # beats as marked in lead ii
        same = [m for lead in marks for m in lead if abs(m[1] - peak) <= 50]
        widths.append(max(m[2] for m in same) - min(m[0] for m in same))
    return float(np.median(widths)) * 2.0  # 500 Hz


@pytest.mark.parametrize("record", [1, 46])
def test_reference_is_earliest_onset_latest_offset(bench: ModuleType, record: int) -> None:
    ref = bench.ludb_reference(record)
    assert ref["qrs"] == pytest.approx(_global_qrs_by_hand(record))
    # Leaving the most extreme lead out can only shorten every global interval.
    alt = bench.ludb_reference(record, rank=1)
    for key in ("p", "qrs", "qt"):
        if ref[key] is not None:
            assert alt[key] <= ref[key]
    if record == 46:  # lead iii / aVF mark the QRS end ~40 ms after the other ten leads
        assert ref["qrs"] - alt["qrs"] >= 10


def test_beat_matching_is_one_to_one_within_150_ms(bench: ModuleType) -> None:
    ref = np.array([1000, 2000, 3000])
    assert bench.match_beats(ref, np.array([1010, 1990, 3000]), 500.0) == (3, 0, 0)
    assert bench.match_beats(ref, np.array([1080, 2000]), 500.0) == (1, 2, 1)  # 80 > 75 samples
    assert bench.match_beats(ref, np.array([1000, 1001, 2000, 3000]), 500.0) == (3, 0, 1)


def test_interval_errors_do_not_regress(bench: ModuleType) -> None:
    from remote_dx.ecg.analysis.analyze import analyze

    records = list(range(2, 41, 2))
    errors: dict[str, list[float]] = {"p": [], "pr": [], "qrs": [], "qt": []}
    for record in records:
        ref = bench.ludb_reference(record)
        res = analyze(bench.ludb_ecg(record))
        ours = {"p": res.p_duration_ms, "pr": res.pr_ms, "qrs": res.qrs_ms, "qt": res.qt_ms}
        for key, value in ours.items():
            if value is not None and ref[key] is not None:
                errors[key].append(value - ref[key])
    # At the time of writing (rdx-ecg 0.5.0): median |error| P 5.0, PR 4.1, QRS 6.6, QT 6.8 ms;
    # mean −4.9, −6.9, +1.5, +3.2 ms. The median-beat rules alone gave P 9.0, PR 6.0, QRS 10.0,
    # QT 7.0, so these bounds fail without the learned reading; they leave room for small
    # changes, not for a broken delineation.
    bounds = {"p": 7.0, "pr": 6.0, "qrs": 8.5, "qt": 12.0}
    means = {"p": 10.0, "pr": 10.0, "qrs": 10.0, "qt": 25.0}  # IEC 60601-2-25 mean tolerances
    for key, errs in errors.items():
        assert len(errs) >= 15, key
        assert float(np.median(np.abs(errs))) <= bounds[key], (key, errs)
        assert abs(float(np.mean(errs))) <= means[key], (key, errs)
