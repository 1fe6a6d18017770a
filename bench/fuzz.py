"""Fuzz the ways in: mutated DICOM through C-STORE (and STOW-RS where the router has it).

    python bench/fuzz.py [--count 10000] [--seed 7] [--batch 200] [--stow/--no-stow]
                         [--database-url postgresql+psycopg://…]   # default: embedded SQLite

Inputs (seeded, so a run can be repeated exactly):

- **byte-mutated**: pydicom's bundled files (CT, MR, ECG waveform, RGB secondary capture, JPEG
  2000, RLE) whose data set bytes get bit flips, "interesting" 32-bit values (lengths of
  0xFFFFFFFF, 0x7FFFFFFF, 0 …), truncation, insertion, deletion, duplicated ranges, splices of
  two seeds, and a transfer syntax in the file meta that does not match the bytes;
- **pydicom-built**: data sets made here with hostile values — missing or malformed UIDs, text in
  a wrong or unknown character set (GB18030, ISO 2022 IR 58, garbage), sequences nested 60
  deep, image geometry that the pixel data does not have, non-numbers in IS/DS, huge values.

The receiver is ``remote-dx scp`` in its own process (a crash ends the process, which we see);
each batch is one association, and an echo follows each batch: the receiver must keep
serving. Findings: an association aborted by the receiver, a status outside success / 0xB0xx
warnings / 0xC000 "cannot understand" / 0xA9xx (0x0110 "processing failure" is our catch-all
for an unexpected exception, i.e. a bug), a failed echo, a dead process; for STOW-RS any 5xx.
Each finding's input is written under ``--findings`` (default tests/fuzz_regressions/) for a
regression test. Prints counts, statuses and throughput; exits 1 if anything was found.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import build_context

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.receiver import remote_dx_command  # noqa: E402

CALLING, CALLED = "XIPING_DR", "REMOTE_DX"
SEED_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "waveform_ecg.dcm",
    "SC_rgb.dcm",
    "SC_rgb_rle.dcm",
    "MR_small_jp2klossless.dcm",
    "rtplan.dcm",
)
SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    RLELossless,
)
SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX
)
INTERESTING = (0, 1, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0xFFFF, 0x10000, 8, 2)
#: Answers that are a proper refusal or success (PS3.4 B.2.3): not a finding.
ACCEPTABLE = {0x0000, 0xC000, 0xA900, 0xB000, 0xB007, 0xB006}


@dataclass
class Sample:
    name: str
    sop_class: str
    syntax: str
    dataset: bytes  # the data set bytes as sent (after the file meta)

    def part10(self) -> bytes:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[self.name])
        meta.TransferSyntaxUID = self.syntax
        out = io.BytesIO()
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)
        return out.getvalue() + self.dataset


def seeds() -> list[Sample]:
    found = []
    for name in SEED_FILES:
        try:
            path = get_testdata_file(name)
        except Exception:  # a name missing from this pydicom: fewer seeds, no download
            path = None
        if not path:
            continue
        data = Path(path).read_bytes()
        meta, offset = split_dataset(Path(path))
        found.append(
            Sample(
                name,
                str(meta.MediaStorageSOPClassUID),
                str(meta.TransferSyntaxUID),
                data[offset:],
            )
        )
    return found


def _fresh_uids(sample: Sample, rng: random.Random) -> bytes:
    """Replace the seed's Study/Series/SOP UIDs (same length) so inputs do not just dedupe."""
    data = sample.dataset
    try:
        ds = pydicom.dcmread(io.BytesIO(sample.part10()), stop_before_pixels=False)
    except Exception:
        return data
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        old = str(ds.get(keyword, "") or "")
        if len(old) < 12:
            continue
        new = old[:-8] + "".join(rng.choice("0123456789") for _ in range(8))
        new = new.replace(".0", ".1")
        data = data.replace(old.encode(), new[: len(old)].encode(), 1)
    return data


def mutate(sample: Sample, rng: random.Random, pool: list[Sample]) -> Sample:
    data = bytearray(_fresh_uids(sample, rng))
    syntax = sample.syntax
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        if not data:
            break
        op = rng.randrange(9)
        at = rng.randrange(len(data))
        if op == 0:  # bit flips
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting 32/16-bit value, often where a length lives
            value = rng.choice(INTERESTING)
            width = rng.choice((2, 4))
            data[at : at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        elif op == 2:  # truncate
            del data[rng.randrange(len(data)) :]
        elif op == 3:  # insert random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif op == 4:  # delete a range
            del data[at : at + rng.randint(1, 256)]
        elif op == 5:  # duplicate a range
            data[at:at] = data[at : at + rng.randint(1, 512)]
        elif op == 6:  # splice with another seed
            other = rng.choice(pool).dataset
            cut = rng.randrange(len(other))
            data = data[:at] + bytearray(other[cut:])
        elif op == 7:  # a transfer syntax that does not match the bytes
            syntax = str(rng.choice(SYNTAXES))
        else:  # a tag's group/element scrambled
            data[at : at + 2] = rng.randbytes(2)
    sop = sample.sop_class if rng.random() < 0.8 else rng.choice(SOP_CLASSES)
    return Sample(f"{sample.name}~{rng.getrandbits(48):012x}", sop, syntax, bytes(data))


_TEXT = (
    ("GB18030", "王小明^胸部正位".encode("gb18030")),
    ("\\ISO 2022 IR 58", b"\x1b$)A\xcd\xf5^\xd0\xa1"),
    ("ISO_IR 192", "张三^心电图".encode()),
    ("ISO_IR 100", b"M\xfcller^J"),
    ("NO SUCH CHARSET", b"\xff\xfe\x00garbage"),
    ("", b"\x1b\x1b\x1b\xc0\xaf"),
)


def _uid(rng: random.Random) -> str:
    return generate_uid(entropy_srcs=[str(rng.getrandbits(64))])


def _raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """An element whose bytes are written as given (pydicom would refuse to convert them)."""
    if len(value) % 2:
        value += b" "
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def built(rng: random.Random, index: int) -> Sample:
    """A data set made with hostile values (pydicom writes what it is given)."""
    ds = Dataset()
    charset, name = rng.choice(_TEXT)
    if charset:
        ds.SpecificCharacterSet = charset
    sop = rng.choice(SOP_CLASSES)
    uid = _uid(rng)
    choice = rng.random()
    ds.SOPClassUID = sop if choice > 0.1 else "not.a.uid"
    ds.SOPInstanceUID = uid if choice > 0.05 else "1." + "9" * 70
    if rng.random() > 0.05:
        ds.StudyInstanceUID = _uid(rng)
    if rng.random() > 0.05:
        ds.SeriesInstanceUID = _uid(rng)
    ds.add_new(0x00100010, "PN", name)
    ds.add_new(0x00081030, "LO", rng.choice(_TEXT)[1])
    ds.PatientID = rng.choice(("P1", "", "x" * 200, "患者"))
    ds.StudyDate = rng.choice(("20261123", "2026-11-23", "99999999", ""))
    ds.Modality = rng.choice(("CT", "ECG", "", "TOOLONGMODALITY"))
    _raw(ds, 0x00200013, "IS", rng.choice((b"1", b"-5", b"abc", b"9" * 14, b"")))
    _raw(ds, 0x00280008, "IS", rng.choice((b"1 ", b"0 ", b"-1", b"x ", b"100000")))
    _raw(ds, 0x00181063, "DS", rng.choice((b"1.5 ", b"NaN ", b"1e999 ", b"--")))
    if rng.random() < 0.6:
        rows, cols = rng.choice(((16, 16), (0, 0), (65535, 65535), (4, 4)))
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = rng.choice((8, 16, 0, 7, 64))
        ds.BitsStored = ds.BitsAllocated
        ds.SamplesPerPixel = rng.choice((1, 3, 0))
        ds.PhotometricInterpretation = rng.choice(("MONOCHROME2", "RGB", "YBR_FULL_422", "?"))
        ds.PixelRepresentation = 0
        ds.add_new(0x7FE00010, "OB", rng.randbytes(rng.choice((0, 1, 255, 512, 4096))))
    if rng.random() < 0.3:  # deep nesting
        inner = Dataset()
        inner.CodeValue = "X"
        for _ in range(rng.randint(1, 60)):
            outer = Dataset()
            outer.ContentSequence = Sequence([inner])
            inner = outer
        ds.ContentSequence = Sequence([inner])
    if rng.random() < 0.2:  # a waveform whose numbers do not add up
        item = Dataset()
        item.NumberOfWaveformChannels = rng.choice((0, 12, 65535))
        item.NumberOfWaveformSamples = rng.choice((0, 10, 4294967295))
        item.SamplingFrequency = rng.choice(("500", "0", "NaN", "-1"))
        item.WaveformBitsAllocated = 16
        item.WaveformSampleInterpretation = "SS"
        item.add_new(0x54001010, "OW", rng.randbytes(rng.choice((0, 24, 1000))))
        ds.WaveformSequence = Sequence([item])
    syntax = rng.choice((ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian))
    out = io.BytesIO()
    try:
        ds.save_as(
            out,
            implicit_vr=syntax == ImplicitVRLittleEndian,
            little_endian=syntax != ExplicitVRBigEndian,
        )
        data = out.getvalue()
    except Exception:  # a value pydicom itself cannot write: send what we have, raw
        data = rng.randbytes(64)
    return Sample(f"built-{index}", sop, str(syntax), data)


def generate(count: int, seed: int) -> Iterator[Sample]:
    rng = random.Random(seed)
    pool = seeds()
    if not pool:
        raise SystemExit("no pydicom test files found to mutate")
    for index in range(count):
        if rng.random() < 0.3:
            yield built(rng, index)
        else:
            yield mutate(rng.choice(pool), rng, pool)


# -- sending --------------------------------------------------------------------------------


@dataclass
class Finding:
    sample: Sample
    what: str


@dataclass
class Outcome:
    sent: int = 0
    unsent: int = 0  # the client could not send it (no accepted context, unreadable meta)
    statuses: Counter[int] | None = None
    findings: list[Finding] | None = None
    stow: Counter[int] | None = None
    timing: int = 0  # aborts that did not reproduce alone (timeouts on a loaded machine)

    def __post_init__(self) -> None:
        self.statuses = Counter()
        self.findings = []
        self.stow = Counter()


def _contexts() -> list:
    # One context per (class, syntax): the receiver accepts one syntax per context.
    pairs = [build_context(sop, syntax) for sop in SOP_CLASSES for syntax in SYNTAXES]
    return [*pairs, build_context("1.2.840.10008.1.1")]


def echo(port: int) -> bool:
    ae = AE(ae_title=CALLING)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    try:
        return assoc.is_established and int(assoc.send_c_echo().Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def replay_alone(port: int, sample: Sample, folder: Path) -> bool:
    """True if the receiver answers ``sample`` properly in an association of its own."""
    alone = Outcome()
    send_batch(port, [sample], folder, alone, replay=False)
    return not alone.findings and alone.sent == 1


def send_batch(
    port: int, batch: list[Sample], folder: Path, outcome: Outcome, replay: bool = True
) -> None:
    """One association; each sample written as a Part 10 file and sent as its bytes are."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=CALLING)
    ae.requested_contexts = []
    for context in _contexts():
        ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    if not assoc.is_established:
        outcome.findings.append(Finding(batch[0], "association not established"))
        ae.shutdown()
        return
    try:
        for sample in batch:
            path = folder / "sample.dcm"
            path.write_bytes(sample.part10())
            try:
                status = assoc.send_c_store(path)
            except (ValueError, AttributeError, RuntimeError, OSError):
                outcome.unsent += 1  # refused on our side before anything was sent
                continue
            if (assoc.is_aborted or not assoc.is_established) and not replay:
                outcome.findings.append(Finding(sample, "association aborted by the receiver"))
                return
            if assoc.is_aborted or not assoc.is_established:
                # Aborted, or our DIMSE timeout on a starved CPU: replay the input alone in a
                # fresh association; only what reproduces is a finding.
                if replay_alone(port, sample, folder):
                    outcome.timing += 1
                    outcome.sent += 1
                else:
                    outcome.findings.append(Finding(sample, "association aborted (reproduced)"))
                rest = batch[batch.index(sample) + 1 :]
                if rest:
                    send_batch(port, rest, folder, outcome)
                return
            code = int(status.Status) if "Status" in status else -1
            outcome.sent += 1
            outcome.statuses[code] += 1
            if code not in ACCEPTABLE:
                comment = str(status.get("ErrorComment", ""))
                outcome.findings.append(Finding(sample, f"status 0x{code & 0xFFFF:04X} {comment}"))
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def stow_sender(data_dir: Path, database_url: str = ""):
    """STOW-RS through the app in this process, or None when the router has no STOW yet."""
    from fastapi.testclient import TestClient

    from remote_dx.api.app import create_app
    from remote_dx.core.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        jwt_secret="fuzz-secret-0123456789abcdef0123456789",
    )
    app = create_app(settings)
    # The schema, not app.routes: FastAPI keeps an included router as one entry there.
    if "post" not in app.openapi()["paths"].get("/dicom-web/studies", {}):
        return None
    client = TestClient(app, raise_server_exceptions=False)
    login = client.post("/api/v1/auth/token", data={"username": "tech_xiping", "password": "demo"})
    token = login.json().get("access_token")
    if not token:  # every STOW-RS would be a 401: a run that fuzzes nothing
        raise SystemExit(f"STOW-RS: the demo technician cannot sign in: {login.text[:200]}")
    headers = {"Authorization": f"Bearer {token}"}

    def send(sample: Sample) -> int:
        boundary = "fuzzboundary" + hashlib.sha1(sample.name.encode()).hexdigest()[:8]
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + sample.part10()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        response = client.post(
            "/dicom-web/studies",
            content=body,
            headers={
                **headers,
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            },
        )
        return response.status_code

    return send


def prepare_hub(data_dir: Path, database_url: str = "") -> dict[str, str]:
    """The hub's database (``database_url``, else SQLite under ``data_dir``), migrated and
    seeded; the receiver's environment for it."""
    from remote_dx.core.db import session_scope
    from remote_dx.core.migrate import upgrade
    from remote_dx.core.network import apply_network, load_network_file
    from remote_dx.core.settings import Settings

    settings = Settings(data_dir=data_dir, database_url=database_url)
    upgrade(settings)
    with session_scope(settings) as session:
        apply_network(
            session,
            load_network_file(ROOT / "sample_studies" / "demo_network.yaml"),
            with_passwords=True,
        )
    return {
        "RDX_DATA_DIR": str(data_dir),
        "RDX_DATABASE_URL": database_url,
        "RDX_DICOM_HOST": "127.0.0.1",
        "RDX_LOG_LEVEL": "WARNING",
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quiet() -> None:
    """pydicom warns about every odd value it writes; the inputs are odd on purpose."""
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)


def run(
    count: int,
    seed: int,
    batch: int = 200,
    stow: bool = True,
    findings_dir: Path | None = None,
    work: Path | None = None,
    echo_every: int = 1,
    database_url: str = "",
) -> Outcome:
    """``count`` inputs of ``seed`` through a receiver process (and STOW-RS), on the embedded
    SQLite or on ``database_url``: PostgreSQL refuses values SQLite keeps (a NUL in a text, an
    integer beyond 2**31), so both are worth a run."""
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    quiet()
    own_work = work is None
    work = work or Path(tempfile.mkdtemp(prefix="rdx-fuzz-"))
    data_dir = work / "hub"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RDX_") or k.startswith("RDX_TEST")
    }
    env.update(prepare_hub(data_dir, database_url))
    port = free_port()
    env["RDX_DICOM_PORT"] = str(port)
    log = (work / "scp.log").open("wb")
    receiver = subprocess.Popen(
        [*remote_dx_command(), "scp"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work
    )
    outcome = Outcome()
    stow_send = stow_sender(data_dir, database_url) if stow else None
    if stow and stow_send is None:
        print("STOW-RS: no POST /dicom-web/studies route in this build; C-STORE only")
    try:
        deadline = time.monotonic() + 60
        while not echo(port):
            if receiver.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"receiver did not start; see {work / 'scp.log'}")
            time.sleep(0.3)
        samples = list(generate(count, seed))
        started = time.perf_counter()
        for number, start in enumerate(range(0, len(samples), batch)):
            chunk = samples[start : start + batch]
            send_batch(port, chunk, work, outcome)
            if stow_send is not None:
                for sample in chunk:
                    code = stow_send(sample)
                    outcome.stow[code] += 1
                    if code >= 500:
                        outcome.findings.append(Finding(sample, f"STOW-RS {code}"))
            if receiver.poll() is not None:
                outcome.findings.append(Finding(chunk[-1], "receiver process died"))
                break
            if number % echo_every == 0 and not echo(port):
                outcome.findings.append(Finding(chunk[-1], "receiver stopped answering echo"))
                break
        elapsed = time.perf_counter() - started
    finally:
        receiver.terminate()
        try:
            receiver.wait(timeout=20)
        except subprocess.TimeoutExpired:
            receiver.kill()
        log.close()
    if findings_dir is not None and outcome.findings:
        findings_dir.mkdir(parents=True, exist_ok=True)
        for finding in outcome.findings:
            data = finding.sample.part10()
            name = hashlib.sha256(data).hexdigest()[:16]
            (findings_dir / f"{name}.dcm").write_bytes(data)
            (findings_dir / f"{name}.txt").write_text(f"{finding.what}\n{finding.sample.name}\n")
    outcome.elapsed = elapsed  # type: ignore[attr-defined]
    if own_work and not outcome.findings:
        shutil.rmtree(work, ignore_errors=True)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--stow", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--findings", type=Path, default=ROOT / "tests" / "fuzz_regressions", help="inputs found"
    )
    parser.add_argument("--database-url", default="", help="default: the embedded SQLite")
    args = parser.parse_args()
    outcome = run(
        args.count, args.seed, args.batch, args.stow, args.findings, database_url=args.database_url
    )
    elapsed = outcome.elapsed  # type: ignore[attr-defined]
    print(f"inputs {args.count} (seed {args.seed}); C-STORE sent {outcome.sent}, "
          f"not sendable by the client {outcome.unsent}")  # fmt: skip
    print("C-STORE statuses: " + ", ".join(
        f"0x{code & 0xFFFF:04X}×{n}" for code, n in sorted(outcome.statuses.items())))  # fmt: skip
    if outcome.stow:
        print("STOW-RS statuses: " + ", ".join(f"{c}×{n}" for c, n in sorted(outcome.stow.items())))
    print(f"{outcome.sent / elapsed:.0f} inputs/s over {elapsed:.1f} s; "
          f"findings {len(outcome.findings)}; aborts that did not reproduce alone "
          f"{outcome.timing}")  # fmt: skip
    for finding in outcome.findings[:20]:
        print(f"  {finding.what}: {finding.sample.name}")
    return 1 if outcome.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
