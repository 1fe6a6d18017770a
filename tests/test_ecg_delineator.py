"""The learned per-lead delineation: its numpy network, the leads' vote, and its use in analyze().

LUDB: Kalyakulina et al., IEEE Access 8:186181 (2020), PhysioNet. The network was trained on the
odd records (bench/train_delineator.py); record 2 used here is held out.
"""

from __future__ import annotations

import numpy as np
import pytest

from remote_dx.ecg.analysis import delineator
from remote_dx.ecg.analysis.delineator import BeatWaves, Votes, beat_waves, median_intervals
from tests.support import ludb_ecg


def _naive_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Same-padded cross-correlation, lead by lead, the slow obvious way (what Conv1d does)."""
    cin, leads, n = x.shape
    cout, _, k = w.shape
    pad = k // 2
    out = np.zeros((cout, leads, n), dtype=np.float64)
    for lead in range(leads):
        xp = np.pad(x[:, lead, :].astype(np.float64), ((0, 0), (pad, pad)))
        for o in range(cout):
            for i in range(cin):
                out[o, lead] += np.correlate(xp[i], w[o, i].astype(np.float64), mode="valid")
            out[o, lead] += b[o]
    return out


@pytest.mark.parametrize("cin", [1, 5])
def test_convolution_keeps_leads_apart(cin: int) -> None:
    rng = np.random.default_rng(cin)
    x = rng.normal(size=(cin, 3, 40)).astype(np.float32)
    w = rng.normal(size=(4, cin, 9)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    got = delineator._conv(x, w, b)
    assert got.shape == (4, 3, 40)
    # Each lead alone gives the same answer as with its neighbours: no tap crossed a lead.
    np.testing.assert_allclose(got, _naive_conv(x, w, b), rtol=1e-4, atol=1e-4)


def test_shipped_network_gives_probabilities_per_lead_and_sample() -> None:
    x = np.random.default_rng(0).normal(0, 0.1, (12, 2501))
    prob = delineator.probabilities(x)
    assert prob.shape == (12, 4, 2501)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-5)


def _naive_forward(x: np.ndarray, w: dict[str, np.ndarray], levels: int) -> np.ndarray:
    """The U-Net's forward pass written out level by level, one lead at a time."""
    out = []
    for lead in x:
        h = lead[None, None, :].astype(np.float32)
        skips = []
        for i in range(levels):
            if i:
                n = h.shape[-1] // 2
                h = np.maximum(h[..., 0 : 2 * n : 2], h[..., 1 : 2 * n : 2])
            for j in range(2):
                h = np.maximum(_naive_conv(h, w[f"d{i}c{j}w"], w[f"d{i}c{j}b"]), 0.0)
            skips.append(h)
        for i, skip in enumerate(reversed(skips[:-1])):
            n = skip.shape[-1]
            h = h[..., [int(k * h.shape[-1] / n) for k in range(n)]]
            h = np.concatenate([h, skip], axis=0)
            for j in range(2):
                h = np.maximum(_naive_conv(h, w[f"u{i}c{j}w"], w[f"u{i}c{j}b"]), 0.0)
        logits = _naive_conv(h, w["headw"], w["headb"])[:, 0, :]
        e = np.exp(logits - logits.max(axis=0))
        out.append(e / e.sum(axis=0))
    return np.stack(out)


@pytest.mark.parametrize("channels", [(3, 4), (2, 3, 4, 4, 5)])
def test_network_depth_and_widths_come_from_the_weights(
    channels: tuple[int, ...], tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(len(channels))
    w: dict[str, np.ndarray] = {}
    cin = 1
    for i, c in enumerate(channels):
        w[f"d{i}c0w"], w[f"d{i}c1w"] = (
            rng.normal(0, 0.5, (c, cin, 9)),
            rng.normal(0, 0.3, (c, c, 9)),
        )
        w[f"d{i}c0b"], w[f"d{i}c1b"] = rng.normal(0, 0.1, c), rng.normal(0, 0.1, c)
        cin = c
    for i, c in enumerate(reversed(channels[:-1])):
        w[f"u{i}c0w"], w[f"u{i}c1w"] = (
            rng.normal(0, 0.3, (c, cin + c, 9)),
            rng.normal(0, 0.3, (c, c, 9)),
        )
        w[f"u{i}c0b"], w[f"u{i}c1b"] = rng.normal(0, 0.1, c), rng.normal(0, 0.1, c)
        cin = c
    w["headw"], w["headb"] = rng.normal(0, 0.5, (4, cin, 1)), rng.normal(0, 0.1, 4)
    w = {k: v.astype(np.float32) for k, v in w.items()}
    path = tmp_path / "net.npz"
    np.savez(path, **w)
    monkeypatch.setattr(delineator, "WEIGHTS", path)
    x = rng.normal(0, 1, (3, 203))  # odd lengths at every level: pooling drops the last sample
    np.testing.assert_allclose(
        delineator.probabilities(x), _naive_forward(x, w, len(channels)), atol=1e-4
    )


def _votes(n: int, spans: dict[int, list[tuple[int, int, float]]], leads: int = 4) -> np.ndarray:
    """[leads, 4, n] probabilities whose vote (sum over the leads) is ``level`` over each span
    of each class, shared equally by the leads."""
    prob = np.zeros((leads, 4, n), dtype=np.float32)
    for cls, runs in spans.items():
        for a, z, level in runs:
            prob[:, cls, a : z + 1] = level / leads
    prob[:, 0] = np.maximum(0.0, 1.0 - prob[:, 1:].sum(axis=1))
    return prob


def test_beat_waves_takes_the_last_p_and_the_longest_t() -> None:
    fs = delineator.FS
    need = Votes(p=1.5, qrs=1.5, t=1.5)
    # One beat, R at sample 250 (1 s): QRS 240–265, an early P-like bump 150–160 and the P
    # 190–220, T 320–340 and 350–400 (the longer one is the T).
    prob = _votes(
        600,
        {
            delineator.QRS: [(240, 265, 3.0)],
            delineator.P_WAVE: [(150, 160, 3.0), (190, 220, 3.0)],
            delineator.T_WAVE: [(320, 340, 3.0), (350, 400, 3.0)],
        },
    )
    (wave,) = beat_waves(prob, np.array([250 / fs]), np.array([0]), need)
    # Crossings are interpolated between samples: the vote rises 0 → 3 over one sample.
    assert wave.qrs_on * fs == pytest.approx(239.5)
    assert wave.qrs_off * fs == pytest.approx(265.5)
    assert wave.p_on * fs == pytest.approx(189.5)
    assert wave.p_off * fs == pytest.approx(220.5)
    assert wave.t_off * fs == pytest.approx(400.5)


def test_beat_waves_ignores_a_wiggle_and_a_beat_without_qrs() -> None:
    fs = delineator.FS
    need = Votes(p=1.5, qrs=1.5, t=1.5)
    prob = _votes(
        600,
        {
            delineator.QRS: [(240, 265, 3.0)],
            delineator.P_WAVE: [(200, 203, 3.0)],  # 16 ms: too short to be a P wave
            delineator.T_WAVE: [(320, 340, 1.0)],  # one lead's worth: below the vote
        },
    )
    waves = beat_waves(prob, np.array([250 / fs, 500 / fs]), np.array([0, 1]), need)
    assert len(waves) == 1  # no QRS vote near the second R peak
    assert waves[0].p_on is None and waves[0].p_off is None and waves[0].t_off is None


def test_median_intervals_are_medians_of_each_beats_own() -> None:
    waves = [
        BeatWaves(qrs_on=1.00, qrs_off=1.10, p_on=0.84, p_off=0.94, t_off=1.40),
        BeatWaves(qrs_on=2.00, qrs_off=2.08, p_on=1.82, p_off=1.92, t_off=2.38),
        BeatWaves(qrs_on=3.00, qrs_off=3.12, p_on=None, p_off=None, t_off=None),
    ]
    got = median_intervals(waves)
    assert got["qrs"] == pytest.approx(100.0)
    assert got["pr"] == pytest.approx(170.0)
    assert got["p"] == pytest.approx(100.0)
    assert got["qt"] == pytest.approx(390.0)
    assert median_intervals([]) == {"p": None, "pr": None, "qrs": None, "qt": None}


def test_analysis_reports_the_mean_of_rules_and_learned_reading() -> None:
    from remote_dx.ecg.analysis.analyze import RULE_WEIGHT, analyze

    result = analyze(ludb_ecg(2))
    rules, learned = result.interval_readings["rules"], result.interval_readings["learned"]
    for key, reported in (("qrs", result.qrs_ms), ("qt", result.qt_ms)):
        assert rules[key] is not None and learned[key] is not None
        expected = RULE_WEIGHT * rules[key] + (1 - RULE_WEIGHT) * learned[key]
        assert reported == pytest.approx(expected, abs=0.05)
    assert "interval_readings" not in result.to_dict()
    # The learned reading on this held-out record, against the cardiologists' global QRS
    # (the earliest onset to the latest offset marked over the 12 leads, median over beats).
    from bench.ecg_accuracy import ludb_reference

    assert learned["qrs"] == pytest.approx(ludb_reference(2)["qrs"], abs=10.0)


def test_a_single_lead_gets_a_learned_reading_too() -> None:
    from remote_dx.ecg.analysis.analyze import analyze
    from remote_dx.ecg.model import ECG

    ecg = ludb_ecg(2)
    result = analyze(ECG(leads={"II": ecg.leads["II"]}, sampling_rate=ecg.sampling_rate))
    learned = result.interval_readings["learned"]
    # 1.5 leads' worth of vote cannot come from one lead: half of the usable leads is asked.
    assert learned["qrs"] is not None and learned["qt"] is not None
    assert 60.0 <= learned["qrs"] <= 160.0 and 300.0 <= learned["qt"] <= 500.0
