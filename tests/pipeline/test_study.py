"""The study pipeline's classify and analyse steps on real files, with a tiny model package."""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from config.settings import DecodeIsolationSettings, Settings
from db import jobs
from db.models import Eligibility, ImagePrediction, Instance, StudyPrediction
from dicom_node.grouping import complete_quiet_studies
from dicom_node.send import send_files
from dicom_node.storage import InstanceStore
from gateway.celery_worker import WorkerContext
from gateway.service import Service
from inference import isolation
from inference.decode import decode_image
from pipeline.analysis import AnalyseStep
from pipeline.heatmaps import heatmap_on_original_grid
from pipeline.study import ClassifyStep, classify_instance
from tests.inference.dicom_factory import DX_FOR_PRESENTATION, make_image
from tests.inference.hanging_decoder import hang_on_rows
from tests.training.packages import localising_package, make_package


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    make_package(folder, size=64)
    return folder


def start_service(home: Path, model_path: Path) -> Service:
    """A DICOM node with the given model and no worker: the tests run the steps themselves."""
    settings = Settings(
        home=home,
        node={"bind_address": "127.0.0.1", "port": 0},
        inference={"model_path": model_path},
        api={"enabled": False},
        grouping={"quiet_period_s": 3600, "analyse_on_arrival": False},
    )
    svc = Service(settings)
    svc.start(dicom=True, worker=False)
    return svc


@pytest.fixture
def service(tmp_path: Path, tiny_package: Path) -> Service:
    svc = start_service(tmp_path / "home", tiny_package)
    yield svc
    svc.stop()


def with_identifiers(source: Path, target: Path, study_uid: str) -> Path:
    """A copy of a real file in a given study, with its own series and instance UIDs.

    The WG04 files share their UIDs across transfer syntaxes; pixel data is kept as is. The
    copies name one patient: images of different patients under one Study UID are held as an
    identity conflict (``dicom_node.identity``).
    """
    ds = dcmread(source)
    ds.StudyInstanceUID = study_uid
    ds.PatientID = "PIPELINE-1"
    ds.PatientName = "PIPELINE^TEST"
    for keyword in ("IssuerOfPatientID", "PatientBirthDate"):
        if keyword in ds:
            del ds[keyword]
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def test_classify_then_analyse_a_mixed_study(
    service: Service, shared_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wg04 = shared_dir / "dicom/robyoung-dicom-test-files/data/WG04"
    study = generate_uid()
    files = [
        with_identifiers(wg04 / "REF/RG2_UNC", tmp_path / "mono2.dcm", study),
        with_identifiers(wg04 / "RLE/RG3_RLE", tmp_path / "mono1_rle.dcm", study),
        with_identifiers(wg04 / "JPLY/RG3_JPLY", tmp_path / "undecodable.dcm", study),
        shared_dir / "dicom/pydicom/src/pydicom/data/test_files/CT_small.dcm",
    ]
    results = send_files(files, "127.0.0.1", service.dicom_port, "FRACTUREGW", "T")
    assert [r.status for r in results] == [0, 0, 0, 0]
    job_ids = complete_quiet_studies(service.sessions, quiet_period_s=0, max_attempts=3)
    assert len(job_ids) == 2  # the radiograph study and the CT study
    classify = ClassifyStep(service.sessions, service.store)
    analyse = AnalyseStep.from_settings(service.settings, service.sessions, service.store)
    while (job := jobs.claim_next(service.sessions, lease_s=60)) is not None:
        classify(job)
        analyse(job)
        analyse(job)  # a retried attempt replaces, never doubles, the job's rows
        assert jobs.complete(service.sessions, job)

    with service.sessions() as session:
        instances = {Path(r.storage_path).stem: r for r in session.scalars(select(Instance)).all()}
        by_reason = {r.eligibility_reason for r in instances.values()}
        eligible = [r for r in instances.values() if r.eligibility == Eligibility.ELIGIBLE]
        assert len(eligible) == 2
        assert any(r and r.startswith("undecodable") for r in by_reason), by_reason
        assert any(r and "radiograph" in r for r in by_reason), by_reason

        predictions = session.scalars(select(ImagePrediction)).all()
        assert sorted(p.instance_id for p in predictions) == sorted(r.id for r in eligible)
        for p in predictions:
            assert 0.0 <= p.probability <= 1.0
            assert (p.model_name, p.model_version) == ("tiny", "0.0.1")
            assert p.heatmap_path is not None
            instance = session.get(Instance, p.instance_id)
            assert instance is not None
            heat = heatmap_on_original_grid(service.store, p.heatmap_path)
            ds = dcmread(service.store.absolute(instance.storage_path), stop_before_pixels=True)
            assert heat.shape == (ds.Rows, ds.Columns)
            assert p.peak_x is not None
            assert 0 <= p.peak_x <= ds.Columns

        studies = session.scalars(select(StudyPrediction)).all()
        assert len(studies) == 2
        with_images = [s for s in studies if s.n_images]
        assert len(with_images) == 1
        assert with_images[0].n_images == 2
        for study in with_images:
            image_probs = [p.probability for p in predictions if p.job_id == study.job_id]
            assert study.probability == pytest.approx(max(image_probs))
            assert study.operating_point == "high_sensitivity"
            assert study.positive == (study.probability >= study.threshold)
        (empty,) = [s for s in studies if not s.n_images]
        assert empty.probability is None
        assert empty.positive is None

    # The pipeline logged its work, but no patient's name or ID.
    patients = {str(dcmread(f, stop_before_pixels=True).PatientName) for f in files}
    patients |= {str(dcmread(f, stop_before_pixels=True).PatientID) for f in files}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "images analysed" in logged
    assert not [p for p in patients if p and p in logged]


def test_a_localising_model_stores_regions_and_a_chest_is_not_applicable(
    tmp_path: Path, shared_dir: Path
) -> None:
    package = tmp_path / "lite"
    localising_package(package)
    service = start_service(tmp_path / "home", package)
    try:
        study = generate_uid()
        hip = with_identifiers(
            shared_dir / "dicom/robyoung-dicom-test-files/data/WG04/REF/RG2_UNC",
            tmp_path / "hip.dcm",
            study,
        )
        chest = with_identifiers(
            shared_dir / "dicom/highdicom/data/test_files/dx_image.dcm",
            tmp_path / "chest.dcm",
            study,
        )
        results = send_files([hip, chest], "127.0.0.1", service.dicom_port, "FRACTUREGW", "T")
        assert [r.status for r in results] == [0, 0]
        complete_quiet_studies(service.sessions, quiet_period_s=0, max_attempts=3)
        job = jobs.claim_next(service.sessions, lease_s=60)
        assert job is not None
        ClassifyStep(service.sessions, service.store)(job)
        AnalyseStep.from_settings(service.settings, service.sessions, service.store)(job)
        with service.sessions() as session:
            by_sop = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
            chest_row = by_sop[str(dcmread(chest).SOPInstanceUID)]
            hip_row = by_sop[str(dcmread(hip).SOPInstanceUID)]
            assert chest_row.eligibility is Eligibility.OUT_OF_SCOPE
            assert "not applicable: body part THORAX" in (chest_row.eligibility_reason or "")
            [prediction] = session.scalars(select(ImagePrediction)).all()
            assert prediction.instance_id == hip_row.id
            assert prediction.regions is not None
            positive = prediction.positive_high_sensitivity
            assert bool(prediction.regions) == positive
            for region in prediction.regions:
                assert 0 <= region["x0"] < region["x1"] <= 1760
                assert 0 <= region["y0"] < region["y1"] <= 2140
    finally:
        service.stop()


#: Rows of the WG04 RG3 radiograph: the hanging decode task never returns on them.
HANGING_ROWS = 1760
#: The decode time limit of the test: short, and far more than the real decodes it runs take.
DECODE_TIMEOUT_S = 2.0
#: What the analysis may take besides the hanging decode: decoding and predicting the other.
ANALYSIS_MARGIN_S = 60.0


def test_an_image_whose_decode_hangs_is_refused_and_its_study_analysed(
    tmp_path: Path, tiny_package: Path, shared_dir: Path
) -> None:
    """The job ends, with the hanging image out of scope as ``decode_timeout``: no stalled queue."""
    limit = DecodeIsolationSettings(decode_timeout_s=DECODE_TIMEOUT_S)
    # Taken before the service's own hold, so that the service decodes with this pool.
    assert isolation.acquire(limit, task=partial(hang_on_rows, HANGING_ROWS))
    service = start_service(tmp_path / "home", tiny_package)
    try:
        wg04 = shared_dir / "dicom/robyoung-dicom-test-files/data/WG04"
        study = generate_uid()
        files = [
            with_identifiers(wg04 / "RLE/RG2_RLE", tmp_path / "decodes.dcm", study),
            with_identifiers(wg04 / "RLE/RG3_RLE", tmp_path / "hangs.dcm", study),
        ]
        results = send_files(files, "127.0.0.1", service.dicom_port, "FRACTUREGW", "T")
        assert [r.status for r in results] == [0, 0]
        complete_quiet_studies(service.sessions, quiet_period_s=0, max_attempts=3)
        job = jobs.claim_next(service.sessions, lease_s=60)
        assert job is not None
        ClassifyStep(service.sessions, service.store)(job)
        analyse = AnalyseStep.from_settings(service.settings, service.sessions, service.store)
        runner = ThreadPoolExecutor(1)
        try:
            # A deadline, not a wait for ever: a stalled analysis fails the test.
            runner.submit(analyse, job).result(timeout=DECODE_TIMEOUT_S + ANALYSIS_MARGIN_S)
        finally:
            runner.shutdown(wait=False)
        assert jobs.complete(service.sessions, job)

        with service.sessions() as session:
            by_sop = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
            hangs = by_sop[str(dcmread(files[1]).SOPInstanceUID)]
            decodes = by_sop[str(dcmread(files[0]).SOPInstanceUID)]
            assert hangs.eligibility is Eligibility.OUT_OF_SCOPE
            assert hangs.eligibility_reason == (
                "decode_timeout: decoding ran past the limit of 2 s; "
                "the decoding process was stopped"
            )
            assert decodes.eligibility is Eligibility.ELIGIBLE
            [prediction] = session.scalars(select(ImagePrediction)).all()
            assert prediction.instance_id == decodes.id
            [study_row] = session.scalars(select(StudyPrediction)).all()
            assert study_row.n_images == 1
        pool = isolation.shared_pool()
        assert pool is not None
        assert pool.timed_out == 1
    finally:
        service.stop()
        isolation.release()
    assert isolation.shared_pool() is None


def truncated_file(sequence: bytes) -> bytes:
    """A small DX image file whose data set ends with ``sequence``, a broken sequence."""
    pixels = np.zeros((4, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    make_image(pixels, write=False).save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data[: data.index(b"\x28\x00\x02\x00US")] + sequence  # before Samples per Pixel


#: Referenced Image Sequence (0008,1140) of undefined length with an item of undefined length
#: that the data set ends inside (pydicom: OSError without errno, "No tag to read"), and one
#: whose 4-byte length is cut to 2 (pydicom: struct.error). Both reached the pipeline's
#: classification unrefused (found by tests/fuzz), whose job then failed for the whole study.
UNCLOSED_ITEM = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
UNCLOSED_ITEM += b"\x08\x00\x55\x11UI\x04\x001.2\x00"
CUT_LENGTH = b"\x08\x00\x40\x11SQ\x00\x00\x26\x00"


@pytest.mark.parametrize("sequence", [UNCLOSED_ITEM, CUT_LENGTH], ids=["unclosed-item", "cut"])
def test_classify_refuses_a_file_that_ends_inside_an_element(
    tmp_path: Path, sequence: bytes
) -> None:
    store = InstanceStore(tmp_path / "storage", fsync=False)
    path = store.instances_dir / "broken.dcm"
    path.write_bytes(truncated_file(sequence))
    instance = Instance(sop_class_uid=DX_FOR_PRESENTATION, storage_path="instances/broken.dcm")
    eligibility, reason = classify_instance(store, instance)
    assert eligibility is Eligibility.OUT_OF_SCOPE
    assert reason == "unreadable: the data set ends inside an element"


def test_classify_lets_a_storage_failure_through(tmp_path: Path) -> None:
    """A file the storage cannot give back is no verdict on the instance: the job is retried."""
    store = InstanceStore(tmp_path / "storage", fsync=False)
    instance = Instance(sop_class_uid=DX_FOR_PRESENTATION, storage_path="instances/gone.dcm")
    with pytest.raises(FileNotFoundError):
        classify_instance(store, instance)


def test_the_service_and_a_celery_worker_hold_the_decode_pool_while_they_run(
    tmp_path: Path, tiny_package: Path, shared_dir: Path
) -> None:
    """Taken at start-up, not at import; given back at stop; the same pool for both roles."""
    rle = dcmread(shared_dir / "dicom/robyoung-dicom-test-files/data/WG04/RLE/RG3_RLE")
    assert isolation.shared_pool() is None
    svc = start_service(tmp_path / "home", tiny_package)
    try:
        pool = isolation.shared_pool()
        assert pool is not None
        worker = WorkerContext.build(svc.settings)
        try:
            assert isolation.shared_pool() is pool
            assert decode_image(rle).pixels.shape == (1760, 1760)
        finally:
            worker.close()
        assert isolation.shared_pool() is pool  # the service still holds it
    finally:
        svc.stop()
    assert isolation.shared_pool() is None
