"""Studies whose names are in ISO 2022 character sets go through the whole job and get results.

A real CR radiograph, renamed with the Japanese (ISO 2022 IR 87) and Korean (ISO 2022 IR 149)
names of pydicom's character set examples, is sent over C-STORE to a running node whose worker
runs the study job (classify, analyse, publish) with a small model. The job must finish, and
the SR and SC it writes must carry the source's Specific Character Set, decode to the same name
and pass dciodvfy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files
from pydicom.uid import generate_uid
from sqlalchemy import select

from config.settings import Settings
from db.models import Job, JobKind, JobState
from db.results import ResultObject
from dicom_node.send import send_files
from gateway.service import Service
from tests.reporting.conftest import dciodvfy
from tests.training.packages import make_package

pytestmark = [pytest.mark.integration]

RG2_UNCOMPRESSED = "dicom/robyoung-dicom-test-files/data/WG04/REF/RG2_UNC"
WAIT_S = 120.0
#: Accepted dciodvfy warnings of results, as in tests/reporting (docs/CONFORMANCE-RESULTS.md).
ALLOWED_WARNINGS = (
    re.compile(r"Unrecognized defined term <99FRACGW>"),
    re.compile(r"is only permitted to be empty when actually unknown.*attribute <Laterality>"),
)


def charset_example(name: str) -> Path:
    [path] = get_charset_files(name)
    return Path(path)


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    make_package(folder, size=64)
    return folder


@pytest.fixture
def node(tmp_path: Path, tiny_package: Path) -> Iterator[Service]:
    settings = Settings(
        home=tmp_path / "home",
        node={"bind_address": "127.0.0.1", "port": 0},
        inference={"model_path": tiny_package},
        api={"enabled": False},
        grouping={"quiet_period_s": 0.2, "poll_interval_s": 0.05},
        jobs={"poll_interval_s": 0.05, "backoff_base_s": 0.0, "max_attempts": 2},
    )
    service = Service(settings)
    service.start(dicom=True, worker=True)
    yield service
    service.stop()


@pytest.mark.parametrize(
    ("example", "character_set"),
    [("chrH31.dcm", ["", "ISO 2022 IR 87"]), ("chrI2.dcm", ["", "ISO 2022 IR 149"])],
)
def test_iso_2022_names_get_valid_results(
    node: Service,
    shared_dir: Path,
    tmp_path: Path,
    example: str,
    character_set: list[str],
) -> None:
    donor = dcmread(charset_example(example))
    assert list(donor.SpecificCharacterSet) == character_set
    source = dcmread(shared_dir / RG2_UNCOMPRESSED)
    source.SpecificCharacterSet = character_set
    source["PatientName"] = donor["PatientName"]
    source.StudyInstanceUID = generate_uid()
    source.SeriesInstanceUID = generate_uid()
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "source.dcm"
    source.save_as(path, enforce_file_format=True)
    name = str(dcmread(path).PatientName)

    [sent] = send_files([path], "127.0.0.1", node.dicom_port, "FRACTUREGW", "MODALITY")
    assert sent.status == 0

    deadline = time.monotonic() + WAIT_S
    while True:
        with node.sessions() as session:
            job = session.scalars(select(Job).where(Job.kind == JobKind.STUDY.value)).first()
            state = None if job is None else job.state
            results = session.scalars(select(ResultObject)).all()
        if state in (JobState.DONE, JobState.FAILED) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert state is JobState.DONE, f"the study job ended {state}"
    assert {r.kind.value for r in results} == {"sr", "sc"}

    for result in results:
        written = node.store.absolute(result.storage_path)
        read = dcmread(written)
        assert list(read.SpecificCharacterSet) == character_set
        assert str(read.PatientName) == name
        verdict = dciodvfy(written)
        assert verdict.errors == [], f"{result.kind}: {verdict.errors}"
        unexplained = [
            w for w in verdict.warnings if not any(a.search(w) for a in ALLOWED_WARNINGS)
        ]
        assert unexplained == [], f"{result.kind}: {unexplained}"
