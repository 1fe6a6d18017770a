"""Train the per-lead wave delineator (P / QRS / T segmentation) on the odd LUDB records.

    /path/to/venv-with-torch/bin/python bench/train_delineator.py [--records odd] [--steps 4000]
        [--channels 8,16,32,32] [--target lead|global]
        [--out src/remote_dx/ecg/analysis/delineator.npz]

Training needs PyTorch (not a dependency of the hub: ``pip install torch==2.13.0`` into a venv that
also has numpy, scipy and wfdb); the hub runs the trained network with numpy alone
(:mod:`remote_dx.ecg.analysis.delineator`). Only LUDB's odd records are used, so the even
records stay held out for ``bench/ecg_accuracy.py``'s verdict; ``--records`` picks another
subset for validation runs within the odd half (``bench/delineator_cv.py`` runs the three folds).

The network is a small 1-D U-Net (Ronneberger et al. 2015; for ECG delineation on LUDB:
Moskalenko et al., "Deep learning for ECG segmentation", 2019). Input: one lead, conditioned as
the hub conditions it (0.5–100 Hz) and taken to 250 Hz, in mV. Output per sample: background,
P, QRS, T. Each lead is one training example, marked as that lead's cardiologist marked it
(LUDB has marks per lead); only the annotated span of a lead counts in the loss.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import wfdb
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from remote_dx.ecg.analysis.delineator import (  # noqa: E402
    CHANNELS,
    FS,
    KERNEL,
    to_network_rate,
)
from remote_dx.ecg.analysis.preprocess import condition  # noqa: E402

LUDB = ROOT.parent / "shared" / "data" / "ecg" / "ludb" / "data"
LEADS = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]
CLASSES = {"p": 1, "N": 2, "t": 3}


def lead_examples(
    record: int, target: str = "lead"
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(signal at 250 Hz in mV, class per sample, loss mask) for each of the record's leads.

    ``target`` "lead": each lead is marked as its cardiologist marked that lead. "global": every
    lead is marked with the union of the 12 leads' marks — a beat's QRS from the earliest onset
    to the latest offset of any lead, likewise P and T (the issue's global reference) — where a
    QRS overrides a P or T that overlaps it; only the span all 12 leads annotate counts.
    """
    rec = wfdb.rdrecord(str(LUDB / str(record)))
    fs = float(rec.fs)
    x = condition(rec.p_signal.T.astype(np.float64), fs)
    x = to_network_rate(x, fs)
    n = x.shape[1]
    ratio = FS / fs
    per_lead = []
    for name in LEADS:
        ann = wfdb.rdann(str(LUDB / str(record)), name)
        labels = np.zeros(n, dtype=np.int64)
        mask = np.zeros(n, dtype=np.float32)
        s, c = ann.sample, ann.symbol
        lo, hi = round(s.min() * ratio), round(s.max() * ratio)
        mask[lo : hi + 1] = 1.0
        for i in range(1, len(c) - 1):
            if c[i] in CLASSES and c[i - 1] == "(" and c[i + 1] == ")":
                a, b = round(s[i - 1] * ratio), round(s[i + 1] * ratio)
                labels[a : b + 1] = CLASSES[c[i]]
        per_lead.append((labels, mask))
    if target == "global":
        union = np.zeros(n, dtype=np.int64)
        for cls in (CLASSES["t"], CLASSES["p"], CLASSES["N"]):  # the later overrides
            union[np.any([lab == cls for lab, _ in per_lead], axis=0)] = cls
        common = np.min([m for _, m in per_lead], axis=0)
        per_lead = [(union, common)] * len(LEADS)
    out = []
    for li, (name, (labels, mask)) in enumerate(zip(LEADS, per_lead, strict=True)):
        idx = rec.sig_name.index(name) if name in rec.sig_name else li
        out.append((x[idx].astype(np.float32), labels, mask))
    return out


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        pad = KERNEL // 2
        self.body = nn.Sequential(
            nn.Conv1d(cin, cout, KERNEL, padding=pad),
            nn.BatchNorm1d(cout),
            nn.ReLU(),
            nn.Conv1d(cout, cout, KERNEL, padding=pad),
            nn.BatchNorm1d(cout),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNet(nn.Module):
    def __init__(self, ch: tuple[int, ...] = CHANNELS) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        cin = 1  # one lead
        for c in ch:
            self.down.append(Block(cin, c))
            cin = c
        self.up = nn.ModuleList()
        for c in reversed(ch[:-1]):
            self.up.append(Block(cin + c, c))
            cin = c
        self.head = nn.Conv1d(cin, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nn.functional.max_pool1d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = nn.functional.interpolate(x, size=skip.shape[-1], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def export(model: UNet, path: Path) -> None:
    """Conv weights with each batch norm folded in, as plain arrays (``d{i}c{j}w`` …)."""
    model.eval()
    arrays: dict[str, np.ndarray] = {}

    def fold(prefix: str, block: Block) -> None:
        layers = list(block.body)
        for j, (conv, bn) in enumerate(((layers[0], layers[1]), (layers[3], layers[4]))):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = conv.weight * scale[:, None, None]
            b = (conv.bias - bn.running_mean) * scale + bn.bias
            arrays[f"{prefix}c{j}w"] = w.detach().numpy().astype(np.float32)
            arrays[f"{prefix}c{j}b"] = b.detach().numpy().astype(np.float32)

    for i, block in enumerate(model.down):
        fold(f"d{i}", block)
    for i, block in enumerate(model.up):
        fold(f"u{i}", block)
    arrays["headw"] = model.head.weight.detach().numpy().astype(np.float32)
    arrays["headb"] = model.head.bias.detach().numpy().astype(np.float32)
    np.savez_compressed(path, **arrays)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--records",
        default="odd",
        help="'odd', or records and ranges such as 1-39,101-139,141 (odd ones only)",
    )
    ap.add_argument(
        "--channels",
        default=",".join(map(str, CHANNELS)),
        help="channels per U-Net level; the hub reads the depth off the weights",
    )
    ap.add_argument(
        "--target",
        choices=("lead", "global"),
        default="lead",
        help="mark each lead with its own marks, or with the union of the 12 leads' marks",
    )
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "src/remote_dx/ecg/analysis/delineator.npz"))
    args = ap.parse_args()
    if args.records == "odd":
        records = list(range(1, 141, 2))
    else:
        records = []
        for part in args.records.split(","):
            a, _, b = part.partition("-")
            records += [r for r in range(int(a), int(b or a) + 1) if r % 2 == 1]
    if not records:
        raise SystemExit("--records names no odd LUDB record (the even ones are held out)")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    examples = [
        (s[None, :], lab, m) for r in records for s, lab, m in lead_examples(r, args.target)
    ]
    print(f"{len(records)} records, {len(examples)} leads read in {time.perf_counter() - t0:.1f} s")

    model = UNet(tuple(int(c) for c in args.channels.split(",")))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps)
    weights = torch.tensor([1.0, 2.0, 2.0, 1.5])
    loss_fn = nn.CrossEntropyLoss(weight=weights, reduction="none")
    t0 = time.perf_counter()
    for step in range(args.steps):
        xs, ys, ms = [], [], []
        for _ in range(args.batch):
            sig, lab, mask = examples[rng.integers(len(examples))]
            valid = np.flatnonzero(mask)
            length = sig.shape[-1]
            lo = max(0, min(valid[0] - args.crop // 4, length - args.crop))
            hi = max(lo, min(valid[-1] + args.crop // 4, length) - args.crop)
            start = int(rng.integers(lo, hi + 1))
            seg = sig[:, start : start + args.crop].copy()
            # Gain, polarity, baseline drift and noise a township cart can give.
            gain = rng.uniform(0.5, 2.0) * rng.uniform(0.85, 1.15)
            seg *= gain
            if rng.random() < 0.2:
                seg[0] = -seg[0]
            t = np.arange(args.crop) / FS
            drift, freq = rng.uniform(0, 0.15), rng.uniform(0.05, 0.5)
            seg[0] += drift * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3))
            seg[0] += rng.normal(0, 1, args.crop) * rng.uniform(0, 0.02)
            xs.append(seg)
            ys.append(lab[start : start + args.crop])
            ms.append(mask[start : start + args.crop])
        x = torch.from_numpy(np.stack(xs).astype(np.float32))
        y = torch.from_numpy(np.stack(ys))
        m = torch.from_numpy(np.stack(ms))
        model.train()
        logits = model(x)
        loss = (loss_fn(logits, y) * m).sum() / m.sum().clamp(min=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - t0
            print(f"step {step:5d}  loss {loss.item():.4f}  {elapsed:.0f} s", flush=True)
    export(model, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
