"""Fuzzing the service's path for a received instance, for a bounded time, in a process apart.

``test_fuzzing_finds_no_crash_hang_or_allocation_over_the_limit`` is the CI run (about 80 s);
on a finding the input is kept under ``test-artifacts/fuzz/`` (or
``$FRACTURE_GATEWAY_TEST_ARTIFACTS/fuzz/``) with the command that replays it. The runner's own
tests show that each kind of finding is caught and its input kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from tests.fuzz.received import Outcome, received_instance_path
from tests.fuzz.runner import Finding, FuzzRun, run_fuzzer
from tests.fuzz.seeds import part10, write_seeds

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where a finding's input is kept for people and CI to pick up (git-ignored).
ARTIFACTS = (
    Path(os.environ.get("FRACTURE_GATEWAY_TEST_ARTIFACTS", str(REPO_ROOT / "test-artifacts")))
    / "fuzz"
)
#: How long CI fuzzes, in seconds; a run takes about 20 s more to start (imports, seeds).
CI_FUZZ_SECONDS = 60
#: The limits of tests.fuzz.fuzz_decode's DEFAULT_FLAGS, stated here so the test shows them.
CI_FLAGS = [
    f"-max_total_time={CI_FUZZ_SECONDS}",
    "-timeout=20",
    "-rss_limit_mb=2048",
    "-print_final_stats=1",
]


def report(run: FuzzRun, module: str) -> str:
    """What a person needs after a finding: what, the inputs kept, how to replay, the output."""
    lines = [
        f"fuzzer found: {run.finding} (exit status {run.returncode})",
        *(f"input kept: {path}" for path in run.artifacts),
        *(f"replay: {command}" for command in run.replay_commands(module)),
        "last output:",
        *run.output.splitlines()[-60:],
    ]
    return "\n".join(lines)


def keep_artifacts(run: FuzzRun) -> FuzzRun:
    """Copy the run's inputs to :data:`ARTIFACTS`, where they outlive the test's folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = []
    for path in run.artifacts:
        target = ARTIFACTS / path.name
        shutil.copyfile(path, target)
        kept.append(target)
    return FuzzRun(run.command, run.returncode, run.output, tuple(kept))


def test_every_seed_is_turned_into_a_model_input(shared_dir: Path, tmp_path: Path) -> None:
    """The seeds reach the decoder and ``prepare``: the fuzzer starts from the deep end."""
    seeds = write_seeds(shared_dir, tmp_path / "seeds")
    assert len(seeds) >= 30
    with received_instance_path() as received:
        outcomes = {path.name: received(path.read_bytes()) for path in seeds}
    assert outcomes == dict.fromkeys(outcomes, Outcome.PREPARED)


def test_an_instance_the_node_refuses_stops_at_the_c_store_handler(
    shared_dir: Path, tmp_path: Path
) -> None:
    """A data set without its Study Instance UID ends where the node answers C001."""
    seed = next(p for p in write_seeds(shared_dir, tmp_path) if p.name.startswith("made-luts"))
    ds = dcmread(seed)
    del ds.StudyInstanceUID
    with received_instance_path() as received:
        assert received(part10(ds, ExplicitVRLittleEndian)) is Outcome.REFUSED
        assert received(b"not a DICOM file") is Outcome.NOT_RECEIVED


@pytest.mark.slow
def test_fuzzing_finds_no_crash_hang_or_allocation_over_the_limit(tmp_path: Path) -> None:
    module = "tests.fuzz.fuzz_decode"
    run = run_fuzzer(
        module,
        tmp_path / "corpus",
        tmp_path / "artifacts",
        flags=CI_FLAGS,
        deadline_s=CI_FUZZ_SECONDS + 120,
        tmp=tmp_path / "tmp",
    )
    print(f"fuzzing statistics: {run.stats}")
    if run.finding is not Finding.NOTHING:
        pytest.fail(report(keep_artifacts(run), module), pytrace=False)
    assert run.stats["number_of_executed_units"] > 0


@pytest.mark.parametrize(
    ("first_byte", "flags", "finding"),
    [
        (b"C", [], Finding.CRASH),
        (b"H", ["-timeout=2"], Finding.TIMEOUT),
        (b"M", ["-rss_limit_mb=300"], Finding.OUT_OF_MEMORY),
    ],
    ids=["exception", "hang", "memory"],
)
def test_the_runner_reports_each_finding_with_its_input(
    tmp_path: Path, first_byte: bytes, flags: list[str], finding: Finding
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "seed").write_bytes(first_byte + b" and more")
    run = run_fuzzer(
        "tests.fuzz.broken_target",
        corpus,
        tmp_path / "artifacts",
        flags=["-max_total_time=30", *flags],
        deadline_s=90,
        tmp=tmp_path / "tmp",
    )
    assert run.finding is finding, run.output[-2000:]
    assert [path.read_bytes() for path in run.artifacts] == [first_byte + b" and more"]
    assert run.replay_commands("tests.fuzz.broken_target") == [
        f"python -m tests.fuzz.broken_target {run.artifacts[0]}"
    ]
