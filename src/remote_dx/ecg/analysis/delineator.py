"""Per-lead wave segmentation (P / QRS / T) by a small trained 1-D U-Net, run with numpy.

Cardiologists mark a wave's onset and offset lead by lead; the global boundaries of a beat are
the earliest onset and latest offset over the 12 leads (IEC 60601-2-25:2011, 201.12.4.4.102;
CSE Working Party, Circulation 1985;71:523). Threshold rules on combined-lead detection
functions reach that convention only on average: where a cardiologist sees a wave begin is where
the signal leaves the noise *as judged by eye*, which no single fraction of a peak captures. A
network trained on per-lead marks learns that judgement from the marks themselves.

The network (Ronneberger et al. 2015's U-Net in one dimension, as Moskalenko et al. 2019 used it
on LUDB) takes one lead at 250 Hz in mV, conditioned as every analysis step conditions it
(0.5–100 Hz, :func:`remote_dx.ecg.analysis.preprocess.condition`), and gives per sample the
probabilities of background, P, QRS and T. It was trained by ``bench/train_delineator.py`` on the
odd LUDB records only (Kalyakulina et al., IEEE Access 2020; ODC-By 1.0), so the even records
stay a held-out test; the weights (batch norm folded into the convolutions) are
``delineator.npz`` beside this module.

All leads of an ECG run as one batch of matrix products: ≈ 55 million multiply-adds per 10-s
lead, ≈ 45 ms for the 12 leads on one core (bench/ecg_speed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import signal
from threadpoolctl import ThreadpoolController

FS = 250.0
#: The shipped network's widths per level (the trainer's default; inference reads the depth
#: and widths off the weights).
CHANNELS = (8, 16, 32, 32)
KERNEL = 9
WEIGHTS = Path(__file__).with_name("delineator.npz")
#: Output classes, in the network's order.
BACKGROUND, P_WAVE, QRS, T_WAVE = range(4)

F32 = NDArray[np.float32]


def to_network_rate(x: NDArray[np.float64], fs: float) -> NDArray[np.float64]:
    """Conditioned leads [n_leads, n] at ``fs`` → the network's 250 Hz (polyphase resampling)."""
    if fs == FS:
        return x
    up, down = _ratio(fs)
    return signal.resample_poly(x, up, down, axis=-1)


def _ratio(fs: float) -> tuple[int, int]:
    from fractions import Fraction

    r = Fraction(FS / fs).limit_denominator(1000)
    return r.numerator, r.denominator


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


@dataclass(frozen=True)
class _Network:
    weights: dict[str, F32]
    levels: int  # of the U-Net: how many down-blocks ``d{i}`` the file holds


def _network() -> _Network:
    return _load(WEIGHTS)


@lru_cache(maxsize=2)
def _load(path: Path) -> _Network:
    """The arrays of a weights file; the network's depth and widths are read off them
    (``bench/delineator_cv.py`` swaps in the networks of its validation folds)."""
    with np.load(path) as data:
        weights = {name: data[name] for name in data.files}
    levels = sum(1 for name in weights if name.startswith("d") and name.endswith("c0w"))
    return _Network(weights, levels)


def warm_up() -> None:
    """Load the weights and find the BLAS libraries ahead of the first ECG (~15 ms)."""
    _network()
    _blas()


def _conv(x: F32, w: F32, b: F32) -> F32:
    """Same-padded 1-D convolution of [cin, leads, n] with [cout, cin, k], plus bias.

    The leads are laid end to end with ``k // 2`` zeros between them (so no tap reaches into
    the next lead) and convolved at once: one matrix product per kernel tap, or, for the
    one-channel input (where a tap's product is a mere outer product), one product with the
    taps stacked (im2col): 0.6 against 6 ms for 12 leads.
    """
    cin, leads, n = x.shape
    cout, _, k = w.shape
    pad = k // 2
    span = n + 2 * pad
    flat = np.pad(x, ((0, 0), (0, 0), (pad, pad))).reshape(cin, leads * span)
    width = leads * span - 2 * pad
    y = np.empty((cout, leads * span), dtype=np.float32)
    out = y[:, :width]
    if cin == 1:
        taps = np.lib.stride_tricks.sliding_window_view(flat, width, axis=1)  # [1, k, width]
        np.matmul(w.reshape(cout, k), taps.reshape(k, width), out=out)
    else:
        np.matmul(w[:, :, 0], flat[:, :width], out=out)
        for tap in range(1, k):
            out += w[:, :, tap] @ flat[:, tap : tap + width]
    out += b[:, None]
    return y.reshape(cout, leads, span)[:, :, :n]


def _block(x: F32, prefix: str, w: dict[str, F32]) -> F32:
    x = np.maximum(_conv(x, w[f"{prefix}c0w"], w[f"{prefix}c0b"]), 0.0)
    return np.maximum(_conv(x, w[f"{prefix}c1w"], w[f"{prefix}c1b"]), 0.0)


def probabilities(leads: NDArray[np.float64]) -> F32:
    """Class probabilities [n_leads, 4, n] for conditioned leads at 250 Hz (mV).

    The products run on one BLAS thread: the worker runs one analysis per core already, and
    OpenBLAS's threads, spinning while they wait for work, took the other process's core (2
    worker processes: 4.8 ECGs/s with BLAS's default threads, against 18 with one).
    """
    with _blas().limit(limits=1, user_api="blas"):
        return _forward(leads)


def _forward(leads: NDArray[np.float64]) -> F32:
    network = _network()
    w = network.weights
    x = np.ascontiguousarray(leads, dtype=np.float32)[None, :, :]  # [channels, leads, n]
    skips = []
    for i in range(network.levels):
        if i:
            n = x.shape[-1] // 2
            x = x[..., : 2 * n].reshape(x.shape[0], x.shape[1], n, 2).max(axis=-1)
        x = _block(x, f"d{i}", w)
        skips.append(x)
    for i, skip in enumerate(reversed(skips[:-1])):
        n = skip.shape[-1]
        # Nearest-neighbour upsampling to the skip's length, as the network was trained.
        x = x[..., np.floor(np.arange(n) * (x.shape[-1] / n)).astype(np.intp)]
        x = _block(np.concatenate([x, skip], axis=0), f"u{i}", w)
    logits = _conv(x, w["headw"], w["headb"]).transpose(1, 0, 2)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class BeatWaves:
    """One beat's global boundaries, in seconds from the start of the recording (None: not
    found). Onsets are the earliest and offsets the latest the leads agree on."""

    qrs_on: float
    qrs_off: float
    p_on: float | None
    p_off: float | None
    t_off: float | None


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True))


def _rise(s: F32, i: int, level: float) -> float:
    """Where ``s`` crosses ``level`` between samples i−1 and i (linear), in samples."""
    if i == 0 or s[i] == s[i - 1]:
        return float(i)
    return i - 1 + (level - s[i - 1]) / (s[i] - s[i - 1])


def _fall(s: F32, j: int, level: float) -> float:
    """Where ``s`` crosses ``level`` between samples j and j+1 (linear), in samples."""
    if j >= s.size - 1 or s[j] == s[j + 1]:
        return float(j)
    return j + (s[j] - level) / (s[j] - s[j + 1])


@dataclass(frozen=True)
class Votes:
    """How many leads' worth of probability make a sample part of each wave."""

    p: float
    qrs: float
    t: float


def beat_waves(
    prob: F32, r_peaks_s: NDArray[np.float64], beats: NDArray[np.intp], votes_needed: Votes
) -> list[BeatWaves]:
    """Global wave boundaries of the ``beats`` (indices into ``r_peaks_s``, seconds).

    The leads vote with their probabilities: a sample belongs to a beat's QRS (P, T) where the
    leads' summed QRS (P, T) probability reaches its ``votes_needed`` — "this many leads see the
    wave here". So a wave begins where the first leads see it and ends where the last do, the
    global convention, without one lead's stray mark deciding it. With few leads (a rhythm
    strip, an ambulatory recording) no more than half of them are asked to agree: 1.5 leads'
    worth could never come from one lead.
    """
    votes = prob.sum(axis=0)  # [4, n]: expected number of leads in each class
    qrs, p, t = votes[QRS], votes[P_WAVE], votes[T_WAVE]
    half = 0.5 * prob.shape[0]
    need_q, need_p, need_t = (
        min(votes_needed.qrs, half),
        min(votes_needed.p, half),
        min(votes_needed.t, half),
    )
    n = qrs.size
    out = []
    peaks = r_peaks_s * FS
    for b in beats:
        c = round(float(peaks[b]))
        if not 0 < c < n - 1:
            continue
        near = np.arange(max(c - 10, 0), min(c + 11, n))  # ±40 ms around the R peak
        inside = near[qrs[near] >= need_q]
        if inside.size == 0:
            continue
        a = z = int(inside[np.argmin(np.abs(inside - c))])
        while a > 0 and qrs[a - 1] >= need_q:
            a -= 1
        while z < n - 1 and qrs[z + 1] >= need_q:
            z += 1
        qrs_on, qrs_off = _rise(qrs, a, need_q), _fall(qrs, z, need_q)
        # The P: the last one ending before this QRS, after the previous beat's T could end.
        previous = peaks[b - 1] if b > 0 else -np.inf
        lo = int(max(a - 0.45 * FS, previous + 0.2 * FS, 0))
        p_on = p_off = None
        p_runs = _runs(p[lo:a] >= need_p)
        if p_runs:
            pa, pz = p_runs[-1]
            on, off = _rise(p, pa + lo, need_p), _fall(p, pz + lo, need_p)
            if off - on >= 0.03 * FS:  # shorter is a wiggle in the PR, not a P wave
                p_on, p_off = on, off
        # The T: the longest after this QRS and before the next one.
        following = peaks[b + 1] if b + 1 < peaks.size else np.inf
        hi = int(min(z + 0.65 * FS, following - 0.05 * FS, n))
        t_off = None
        t_runs = _runs(t[z + 1 : hi] >= need_t)
        if t_runs:
            _, tz = max(t_runs, key=lambda r: r[1] - r[0])
            t_off = _fall(t, tz + z + 1, need_t)
        out.append(
            BeatWaves(
                qrs_on=qrs_on / FS,
                qrs_off=qrs_off / FS,
                p_on=None if p_on is None else p_on / FS,
                p_off=None if p_off is None else p_off / FS,
                t_off=None if t_off is None else t_off / FS,
            )
        )
    return out


def median_intervals(waves: list[BeatWaves]) -> dict[str, float | None]:
    """The record's P duration, PR, QRS and QT (ms): each beat's own, then the median over the
    beats (the order of the CSE and IEC 60601-2-25 reference readings); None where no beat had
    the wave."""

    def median(values: list[float]) -> float | None:
        return float(np.median(values)) * 1000.0 if values else None

    with_p = [w for w in waves if w.p_on is not None and w.p_off is not None]
    return {
        "p": median([w.p_off - w.p_on for w in with_p]),  # type: ignore[operator]
        "pr": median([w.qrs_on - w.p_on for w in with_p]),  # type: ignore[operator]
        "qrs": median([w.qrs_off - w.qrs_on for w in waves]),
        "qt": median([w.t_off - w.qrs_on for w in waves if w.t_off is not None]),
    }
