"""Orthanc, a real PACS, routes a study to the gateway through its REST API."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from db.models import Instance, Study
from tests.helpers.node import NodeFactory
from tests.helpers.orthanc import (
    Orthanc,
    orthanc,  # noqa: F401 - fixture
)


def test_orthanc_sends_a_study_which_is_stored_and_grouped(
    orthanc: Orthanc,  # noqa: F811
    start_node: NodeFactory,
    shared_dir: Path,
) -> None:
    node = start_node(node={"known_sources": [{"ae_title": orthanc.ae_title}]})
    wg04 = shared_dir / "dicom/robyoung-dicom-test-files/data/WG04"
    files = [wg04 / "REF/RG3_UNC", wg04 / "J2KR/RG2_J2KR"]
    files.append(shared_dir / "dicom/highdicom/data/test_files/dx_image.dcm")
    study_ids = {orthanc.upload(f.read_bytes())["ParentStudy"] for f in files}

    orthanc.add_modality("gateway", node.settings.node.ae_title, "127.0.0.1", node.dicom_port)
    orthanc.send_to_modality("gateway", sorted(study_ids))

    with node.sessions() as session:
        rows = session.scalars(select(Instance)).all()
        studies = session.scalars(select(Study)).all()
        expected = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert {r.sop_instance_uid for r in rows} == expected
        assert {r.calling_ae_title for r in rows} == {orthanc.ae_title}
        expected_studies = {
            str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files
        }
        assert {s.study_instance_uid for s in studies} == expected_studies
        for row in rows:
            stored = dcmread(node.store.absolute(row.storage_path), stop_before_pixels=True)
            assert stored.SOPInstanceUID == row.sop_instance_uid
            assert stored.file_meta.TransferSyntaxUID == row.transfer_syntax_uid
