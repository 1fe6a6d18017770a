"""Speed of the preliminary ECG analysis (issue 3 proof).

    .venv/bin/python bench/ecg_speed.py [--records 40] [--repeat 3]

Per 10 s, 500 Hz 12-lead ECG (LUDB records, see bench/ecg_accuracy.py for the citation):
our ``analyze()`` vs a plain ``neurokit2.ecg_process`` over the 12 leads, in the same run and
process, one core; then throughput of ``analyze()`` in a multiprocessing pool of 2 workers.
Targets: ≤ 150 ms per ECG on one core, ≥ 5 ECGs/s on two cores. Loading (wfdb) is excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ecg_accuracy import ludb_ecg  # noqa: E402

from remote_dx.ecg.analysis import ALGORITHM_VERSION  # noqa: E402
from remote_dx.ecg.analysis.analyze import analyze  # noqa: E402
from remote_dx.ecg.model import ECG  # noqa: E402

TARGET_MS = 150.0
TARGET_PER_S = 5.0


def _nk_process(ecg: ECG) -> None:
    import neurokit2 as nk

    fs = int(ecg.sampling_rate)
    for values in ecg.leads.values():
        # A lead neurokit2 cannot process still costs its time; the error is not ours to report.
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            nk.ecg_process(values.astype(float), sampling_rate=fs)


def _time(fn, ecgs: list[ECG], repeat: int) -> np.ndarray:
    out = []
    for _ in range(repeat):
        for ecg in ecgs:
            t = time.perf_counter()
            fn(ecg)
            out.append((time.perf_counter() - t) * 1000)
    return np.array(out)


def _worker(ecg: ECG) -> str | None:
    return analyze(ecg).rhythm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=40, help="LUDB records 1..N")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pool-ecgs", type=int, default=400, help="ECGs through the 2-worker pool")
    args = ap.parse_args()
    import neurokit2

    print(
        f"ECG analysis speed — {ALGORITHM_VERSION}, neurokit2 {neurokit2.__version__}, "
        f"nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f}"
    )
    ecgs = [ludb_ecg(r) for r in range(1, args.records + 1)]
    print(
        f"{len(ecgs)} LUDB ECGs: 12 leads × {ecgs[0].n_samples} samples at "
        f"{ecgs[0].sampling_rate:g} Hz"
    )
    analyze(ecgs[0])  # warm imports and filter-design caches for both
    _nk_process(ecgs[0])

    ours = _time(analyze, ecgs, args.repeat)
    peer = _time(_nk_process, ecgs, 1)
    o_med, o_p95 = np.median(ours), np.percentile(ours, 95)
    p_med, p_p95 = np.median(peer), np.percentile(peer, 95)
    print("\nper ECG, one core (ms)        median      p95")
    print(f"  analyze()                  {o_med:7.1f}  {o_p95:7.1f}   ({ours.size} runs)")
    print(f"  neurokit2.ecg_process × 12 {p_med:7.1f}  {p_p95:7.1f}   ({peer.size} runs)")
    print(f"  ratio neurokit2 / ours (median): {p_med / o_med:.1f} (ours faster by that factor)")
    ok1 = o_p95 <= TARGET_MS
    print(
        f"  target ≤ {TARGET_MS:.0f} ms per ECG: "
        f"{'TARGET MET' if ok1 else 'BELOW TARGET'} (p95 {o_p95:.1f} ms)"
    )

    batch = [ecgs[i % len(ecgs)] for i in range(args.pool_ecgs)]
    ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
    with ctx.Pool(2) as pool:
        pool.map(_worker, batch[:4])  # start the workers before timing
        t = time.perf_counter()
        pool.map(_worker, batch, chunksize=8)
        dt = time.perf_counter() - t
    rate = len(batch) / dt
    ok2 = rate >= TARGET_PER_S
    print(
        f"\n2 worker processes: {len(batch)} ECGs in {dt:.2f} s = {rate:.1f} ECGs/s; "
        f"target ≥ {TARGET_PER_S:.0f}/s: {'TARGET MET' if ok2 else 'BELOW TARGET'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
