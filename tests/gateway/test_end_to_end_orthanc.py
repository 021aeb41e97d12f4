"""End to end with a real PACS: Orthanc sends studies to the gateway, results come back to it.

Orthanc holds two studies (a CR, and a two-image DX study for a patient with a non-ASCII name),
sends them to a running gateway Service, and the gateway's SR and heat-map SCs must appear in
Orthanc in the same patient and study, with references to the right images. Runs the bundled
model when it is there, else a tiny untrained package (the test is about the data path, not
about the model's accuracy).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from config.settings import Destination, InferenceSettings, Settings
from db.results import OutboxState
from dicom_node.outbox import list_outbox
from gateway.service import Service
from tests.helpers.orthanc import Orthanc, orthanc

__all__ = ["orthanc"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RG2_UNCOMPRESSED = "robyoung-dicom-test-files/data/WG04/REF/RG2_UNC"
DX_MONOCHROME1 = "highdicom/data/test_files/dx_image.dcm"
NON_ASCII_NAME = "Müller^Jürgen"
GATEWAY_AE = "FRACTUREGW"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
WAIT_S = 120.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model package when present, else a tiny untrained one."""
    bundled = InferenceSettings().model_path
    if (bundled / "model.json").is_file():
        return bundled
    from tests.training.packages import make_package

    folder = tmp_path_factory.mktemp("tiny-model")
    make_package(folder, size=64)
    return folder


def encoded(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def sources(shared_dir: Path) -> list[list[Dataset]]:
    """Two studies: a CR alone, and two DX images of a patient with a UTF-8 name."""
    cr = dcmread(shared_dir / "dicom" / RG2_UNCOMPRESSED)
    dx = dcmread(shared_dir / "dicom" / DX_MONOCHROME1)
    # The file says THORAX, which the bundled model does not cover (it would be "not
    # applicable" with no results); this test is about delivery, so it is sent as a hand.
    dx.BodyPartExamined = "HAND"
    dx.SpecificCharacterSet = "ISO_IR 192"
    dx.PatientName = NON_ASCII_NAME
    second = copy.deepcopy(dx)
    second.SeriesInstanceUID = generate_uid(entropy_srcs=[str(dx.SOPInstanceUID), "series"])
    second.SOPInstanceUID = generate_uid(entropy_srcs=[str(dx.SOPInstanceUID), "instance"])
    second.SeriesNumber = 2
    second.InstanceNumber = 1
    return [[cr], [dx, second]]


@pytest.fixture
def gateway(orthanc: Orthanc, model_path: Path, tmp_path: Path) -> Iterator[Service]:
    settings = Settings(
        home=tmp_path / "gateway",
        node={"ae_title": GATEWAY_AE, "bind_address": "127.0.0.1", "port": 0},
        grouping={"quiet_period_s": 1.0, "poll_interval_s": 0.2},
        jobs={"poll_interval_s": 0.2, "backoff_base_s": 0.5, "max_attempts": 2},
        inference={"model_path": model_path},
        api={"enabled": False},
        destinations=[
            Destination(
                name="orthanc", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port
            )
        ],
        outbox={"poll_interval_s": 0.2, "backoff_base_s": 0.5, "backoff_max_s": 2.0},
    )
    service = Service(settings)
    try:
        service.start()
        orthanc.add_modality("gateway", GATEWAY_AE, "127.0.0.1", service.dicom_port)
        yield service
    finally:
        service.stop()


def wait_for_instances(orthanc: Orthanc, study_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while True:
        instances = orthanc.study_instances(study_id)
        if len(instances) >= count:
            return instances
        if time.monotonic() > deadline:
            raise TimeoutError(f"study has {len(instances)} instances, expected {count}")
        time.sleep(0.5)


def download(orthanc: Orthanc, instance_id: str) -> Dataset:
    response = orthanc.client.get(f"/instances/{instance_id}/file")
    response.raise_for_status()
    return dcmread(BytesIO(response.content))


def test_results_reach_orthanc_in_the_source_study(
    orthanc: Orthanc, gateway: Service, shared_dir: Path
) -> None:
    studies = sources(shared_dir)
    orthanc_study_ids = []
    for study in studies:
        answers = [orthanc.upload(encoded(ds)) for ds in study]
        assert {a["Status"] for a in answers} == {"Success"}
        orthanc_study_ids.append(answers[0]["ParentStudy"])

    orthanc.send_to_modality("gateway", orthanc_study_ids)

    for study, study_id in zip(studies, orthanc_study_ids, strict=True):
        source_uids = {str(ds.SOPInstanceUID) for ds in study}
        # Each source, one SC per source, one SR.
        instances = wait_for_instances(orthanc, study_id, 2 * len(study) + 1)
        datasets = {
            str(ds.SOPInstanceUID): ds
            for ds in (download(orthanc, instance["ID"]) for instance in instances)
        }
        assert len(instances) == 2 * len(study) + 1
        patients = {orthanc.get(f"/instances/{i['ID']}/patient")["ID"] for i in instances}
        assert len(patients) == 1
        assert {i["ParentSeries"] for i in instances} <= set(
            orthanc.get(f"/studies/{study_id}")["Series"]
        )

        scs = [ds for ds in datasets.values() if ds.SOPClassUID == SC_CLASS]
        (sr,) = (ds for ds in datasets.values() if ds.SOPClassUID == SR_CLASS)
        assert len(scs) == len(study)
        assert {sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in scs} == source_uids
        for result in [*scs, sr]:
            assert result.StudyInstanceUID == study[0].StudyInstanceUID
            assert result.PatientID == study[0].PatientID
            assert result.PatientName == study[0].PatientName
        evidence = {
            item.ReferencedSOPInstanceUID
            for study_item in sr.CurrentRequestedProcedureEvidenceSequence
            for series_item in study_item.ReferencedSeriesSequence
            for item in series_item.ReferencedSOPSequence
        }
        assert evidence == source_uids | {str(sc.SOPInstanceUID) for sc in scs}

    patient = orthanc.get(f"/studies/{orthanc_study_ids[1]}/patient")
    assert patient["MainDicomTags"]["PatientName"] == NON_ASCII_NAME

    # Every object delivered exactly once (Orthanc would hold a second copy under a new UID).
    views = list_outbox(gateway.sessions)
    assert len(views) == sum(len(study) + 1 for study in studies)  # SCs and SR per study
    deadline = time.monotonic() + 10
    while {v.state for v in views} != {OutboxState.SENT} and time.monotonic() < deadline:
        time.sleep(0.2)
        views = list_outbox(gateway.sessions)
    assert {v.state for v in views} == {OutboxState.SENT}
    assert len(orthanc.get("/instances")) == sum(2 * len(study) for study in studies) + 2
