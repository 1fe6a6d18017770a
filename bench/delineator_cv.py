"""Cross-validation of the learned delineator within the odd LUDB records (issue 3's choices).

    .venv/bin/python bench/delineator_cv.py --torch-python /path/to/torch-venv/bin/python \\
        [--channels 8,16,32,32] [--steps 4000] [--threads 2] [--workdir var/cv/baseline]

The even LUDB records are the held-out verdict of ``bench/ecg_accuracy.py``; anything about the
network (its size, its training, how the leads vote, how its reading is weighed against the
rules') is chosen here instead, on the odd half alone. The odd records are split into three
folds (1–39, 41–99, 101–139); for each fold a network is trained by ``train_delineator.py`` on
the other two (with the PyTorch of ``--torch-python``: not a dependency of the hub) and the
fold's records are read with it. Printed: the global intervals' error (issue 3 definition,
``ecg_accuracy.ludb_reference``), mean ± SD in ms, of the rules' reading, the learned reading and
the reported one (their weighted mean, ``analyze.RULE_WEIGHT``), over all 70 odd records, each
read by the network that did not see it.

A fold's weights are kept in ``--workdir`` and reused, so a second run only reads (one workdir
per variant: kept weights are not checked against the options).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ecg_accuracy import LABELS, ludb_ecg, ludb_reference  # noqa: E402

from remote_dx.ecg.analysis import analyze as analyze_module  # noqa: E402
from remote_dx.ecg.analysis import delineator  # noqa: E402
from remote_dx.ecg.analysis.analyze import analyze  # noqa: E402

FOLDS = ((1, 39), (41, 99), (101, 139))
KEYS = tuple(LABELS)  # p, pr, qrs, qt


def fold_records(lo: int, hi: int) -> list[int]:
    return [r for r in range(lo, hi + 1) if r % 2 == 1]


def train(args: argparse.Namespace, fold: int, out: Path) -> None:
    """The fold's network, trained on the other folds' odd records (skipped when kept)."""
    if out.exists():
        return
    others = ",".join(f"{lo}-{hi}" for i, (lo, hi) in enumerate(FOLDS) if i != fold)
    command = [
        args.torch_python,
        str(ROOT / "bench" / "train_delineator.py"),
        f"--records={others}",
        f"--channels={args.channels}",
        f"--steps={args.steps}",
        f"--target={args.target}",
        f"--threads={args.threads}",
        f"--seed={args.seed}",
        f"--out={out}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"fold {fold}: trained on {others} in {time.perf_counter() - started:.0f} s", flush=True)


def readings(record: int) -> dict[str, dict[str, float | None]]:
    """The rules', the learned and the reported intervals of one record; the P and PR only
    where the hub reports them (the rules decide whether a P is measured)."""
    result = analyze(ludb_ecg(record))
    rules, learned = result.interval_readings["rules"], result.interval_readings["learned"]
    reported = {
        "p": result.p_duration_ms,
        "pr": result.pr_ms,
        "qrs": result.qrs_ms,
        "qt": result.qt_ms,
    }
    out = {"rules": dict(rules), "learned": dict(learned), "reported": reported}
    if reported["pr"] is None:
        for reading in out.values():
            reading["p"] = reading["pr"] = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--channels", default=",".join(map(str, delineator.CHANNELS)))
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--target", choices=("lead", "global"), default="lead")
    ap.add_argument(
        "--votes",
        type=float,
        nargs=3,
        metavar=("P", "QRS", "T"),
        help="leads' worth of probability that make a wave (default: analyze.VOTES_NEEDED)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=str(ROOT / "var" / "cv" / "baseline"))
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    shipped = delineator.WEIGHTS
    if args.votes:
        analyze_module.VOTES_NEEDED = delineator.Votes(*args.votes)
    rows: list[tuple[dict[str, object], dict[str, dict[str, float | None]]]] = []
    try:
        for fold, (lo, hi) in enumerate(FOLDS):
            weights = workdir / f"fold{fold}.npz"
            train(args, fold, weights)
            delineator.WEIGHTS = weights
            rows += [(ludb_reference(r), readings(r)) for r in fold_records(lo, hi)]
    finally:
        delineator.WEIGHTS = shipped

    print(
        f"\nodd-record 3-fold CV: channels {args.channels}, {args.steps} steps, seed {args.seed},"
        f" {args.target} marks, votes {analyze_module.VOTES_NEEDED}"
    )
    print(f"  {'reading':<14}" + "".join(f"{LABELS[k]:>18}" for k in KEYS))
    for name in ("rules", "learned", "reported"):
        print_row(
            name,
            {k: [r[name][k] - ref[k] for ref, r in rows if _both(ref, r[name], k)] for k in KEYS},
        )
    print("  the rules' weight in the mean (reported: analyze.RULE_WEIGHT):")
    for weight in (0.25, 0.5, 0.75):
        print_row(
            f"    {weight:.2f}",
            {
                k: [
                    weight * r["rules"][k] + (1 - weight) * r["learned"][k] - ref[k]
                    for ref, r in rows
                    if _both(ref, r["rules"], k) and _both(ref, r["learned"], k)
                ]
                for k in KEYS
            },
        )
    return 0


def _both(ref: dict[str, object], reading: dict[str, float | None], key: str) -> bool:
    return ref[key] is not None and reading[key] is not None


def print_row(name: str, errors: dict[str, list]) -> None:
    cells = []
    for key in KEYS:
        a = np.asarray(errors[key], dtype=float)
        cells.append(f"{a.mean():+6.1f} ± {a.std(ddof=1):4.1f} ({a.size})")
    print(f"  {name:<14}" + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(main())
