"""The C-STORE SCP against real peers: pynetdicom and dcmtk storescu, with real files."""

from __future__ import annotations

import copy
import struct
import subprocess
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from sqlalchemy import func, select

from db.models import Eligibility, Instance, Series, Study
from dicom_node.conformance import (
    ACCEPTED_TRANSFER_SYNTAXES,
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    StoreStatus,
)
from dicom_node.peer import request_association
from dicom_node.send import send_files
from gateway.service import Service
from inference.pixels import DECODABLE_TRANSFER_SYNTAXES
from tests.helpers.inventory import one_file_per_transfer_syntax
from tests.helpers.node import NodeFactory
from tests.helpers.tools import require_program

CALLED = "FRACTUREGW"


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a file, without preamble and file meta."""
    raw = path.read_bytes()
    meta_end = _meta_end(raw)
    return raw[meta_end:]


def _meta_end(raw: bytes) -> int:
    stream = BytesIO(raw)
    pydicom.filereader.read_preamble(stream, False)
    pydicom.filereader._read_file_meta_info(stream)
    return stream.tell()


def stored_rows(service: Service) -> list[Instance]:
    with service.sessions() as session:
        return list(session.scalars(select(Instance)).all())


def count(service: Service, model: type) -> int:
    with service.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def small_dx(**attrs: object) -> Dataset:
    """A tiny valid DX image data set, with file meta, for targeted tests."""
    ds = Dataset()
    ds.SOPClassUID = DX_PRESENTATION_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "TEST^SMALL"
    ds.PatientID = "SMALL-1"
    ds.Modality = "DX"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def encode(ds: Dataset, *, is_implicit_vr: bool, is_little_endian: bool) -> bytes:
    """The encoded data set alone, as a C-STORE carries it."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = is_implicit_vr
    buffer.is_little_endian = is_little_endian
    write_dataset(buffer, ds)
    return buffer.getvalue()


def store_datasets(port: int, datasets: list[Dataset], *, calling: str = "TESTSCU") -> list[int]:
    ae = AE(ae_title=calling)
    for ds in datasets:
        ae.add_requested_context(str(ds.SOPClassUID), [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_accepted_transfer_syntaxes_are_all_decodable() -> None:
    """We only negotiate syntaxes whose pixel data the pipeline decodes."""
    assert set(ACCEPTED_TRANSFER_SYNTAXES) <= set(DECODABLE_TRANSFER_SYNTAXES)


def test_pynetdicom_scu_stores_every_transfer_syntax_as_received(
    node: Service, shared_dir: Path
) -> None:
    files = one_file_per_transfer_syntax(shared_dir, ACCEPTED_TRANSFER_SYNTAXES)
    # Every syntax present in the shared files is exercised.
    assert len(files) >= 13, sorted(files)
    results = send_files(list(files.values()), "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    assert [r.status for r in results] == [0] * len(files), results

    rows = {row.transfer_syntax_uid: row for row in stored_rows(node)}
    assert set(rows) == set(files)
    for syntax, source in files.items():
        stored = node.store.absolute(rows[syntax].storage_path)
        # Bytes as received: the data set part is identical, no decode or re-encode.
        assert dataset_bytes(stored) == dataset_bytes(source), syntax
        meta = dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == syntax
    assert files_under(node.store.tmp_dir) == []


def test_storescu_sends_radiographs_in_several_syntaxes(node: Service, shared_dir: Path) -> None:
    storescu = require_program("storescu")
    wg04 = shared_dir / "dicom/robyoung-dicom-test-files/data/WG04"
    # The option makes storescu propose the file's own (compressed) syntax: no conversion.
    sends = {
        wg04 / "REF/RG2_UNC": "-xe",
        wg04 / "RLE/RG2_RLE": "-xr",
        wg04 / "J2KR/RG2_J2KR": "-xv",
        wg04 / "JLSL/RG3_JLSL": "-xt",
        shared_dir / "dicom/highdicom/data/test_files/dx_image.dcm": "-xe",
    }
    files = list(sends)
    port = str(node.dicom_port)
    for file, propose in sends.items():
        proc = subprocess.run(
            [storescu, "-aet", "DCMTKSCU", "-aec", CALLED, propose, "127.0.0.1", port, str(file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
    rows = stored_rows(node)
    assert len(rows) == len(files)
    assert {r.calling_ae_title for r in rows} == {"DCMTKSCU"}
    assert all(r.eligibility == Eligibility.PENDING for r in rows)
    assert {r.transfer_syntax_uid for r in rows} == {
        dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files
    }


def test_out_of_scope_class_is_recorded_not_analysed(node: Service, shared_dir: Path) -> None:
    ct = shared_dir / "dicom/pydicom/src/pydicom/data/test_files/CT_small.dcm"
    results = send_files([ct], "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    assert results[0].status == 0
    (row,) = stored_rows(node)
    assert row.eligibility == Eligibility.OUT_OF_SCOPE
    assert row.eligibility_reason
    assert "radiograph" in row.eligibility_reason


def test_out_of_scope_class_refused_at_negotiation_when_configured(
    start_node: NodeFactory, shared_dir: Path
) -> None:
    node = start_node(node={"reject_out_of_scope": True})
    ct = shared_dir / "dicom/pydicom/src/pydicom/data/test_files/CT_small.dcm"
    results = send_files([ct], "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    assert results[0].status is None
    assert count(node, Instance) == 0


def test_unknown_calling_ae_is_rejected(start_node: NodeFactory, shared_dir: Path) -> None:
    node = start_node(node={"known_sources": [{"ae_title": "PACS1"}]})
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    request = request_association(ae, "127.0.0.1", node.dicom_port, CALLED)
    assert request.rejection is not None
    assert (request.rejection.result, request.rejection.source) == (1, 1)  # permanent, user
    assert request.rejection.diagnostic == 0x03  # calling AE title not recognised

    storescu = require_program("storescu")
    dx = shared_dir / "dicom/highdicom/data/test_files/dx_image.dcm"
    denied = subprocess.run(
        [storescu, "-aet", "INTRUDER", "-aec", CALLED, "127.0.0.1", str(node.dicom_port), str(dx)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode != 0
    assert "Rejected" in denied.stderr or "rejected" in denied.stderr.lower()
    allowed = subprocess.run(
        [storescu, "-aet", "PACS1", "-aec", CALLED, "127.0.0.1", str(node.dicom_port), str(dx)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert count(node, Instance) == 1


def test_known_source_pinned_to_another_host_is_rejected(start_node: NodeFactory) -> None:
    node = start_node(node={"known_sources": [{"ae_title": "PACS1", "host": "10.1.2.3"}]})
    ae = AE(ae_title="PACS1")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    request = request_association(ae, "127.0.0.1", node.dicom_port, CALLED)
    assert request.rejection is not None
    assert request.rejection.diagnostic == 0x03


def test_node_on_all_addresses_accepts_only_local_callers_by_default(
    start_node: NodeFactory,
) -> None:
    """Bound to all addresses with no known sources, a caller on this machine is accepted.

    Remote callers are refused by the same rule (``Settings.calling_ae_allowed``, tested in
    tests/config with remote addresses); the host-pinned test above shows a refusal on the wire.
    """
    node = start_node(node={"bind_address": "0.0.0.0"})
    assert not node.settings.calling_ae_allowed("ANYONE", "10.0.0.9")
    ae = AE(ae_title="ANYONE")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    local = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    assert local.is_established
    local.release()


def test_wrong_called_ae_title_is_rejected(node: Service) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    request = request_association(ae, "127.0.0.1", node.dicom_port, "SOMEONEELSE")
    assert request.rejection is not None
    assert request.rejection.diagnostic == 0x07  # called AE title not recognised


def test_unsupported_transfer_syntax_is_refused_at_negotiation(node: Service) -> None:
    jpeg2000_part2 = "1.2.840.10008.1.2.4.92"  # multi-component JPEG 2000: not decodable
    mpeg2 = "1.2.840.10008.1.2.4.100"
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE, [jpeg2000_part2, mpeg2])
    ae.add_requested_context(DX_PRESENTATION_STORAGE, [mpeg2, ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    assert assoc.is_established
    try:
        by_class = {str(cx.abstract_syntax): cx for cx in assoc.accepted_contexts}
        assert CR_IMAGE_STORAGE not in by_class  # refused: the sender can fall back
        assert by_class[DX_PRESENTATION_STORAGE].transfer_syntax[0] == ExplicitVRLittleEndian
        rejected = {str(cx.abstract_syntax): cx for cx in assoc.rejected_contexts}
        assert rejected[CR_IMAGE_STORAGE].result == 0x04  # transfer syntaxes not supported
    finally:
        assoc.release()


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("SOPInstanceUID", "../../escape"),
        ("StudyInstanceUID", "../../../tmp/evil"),
        ("SeriesInstanceUID", "1.2/../../3"),
    ],
)
def test_path_traversal_uids_are_refused_and_nothing_escapes(
    node: Service, tmp_path: Path, attribute: str, value: str
) -> None:
    ds = small_dx()
    pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
    try:
        setattr(ds, attribute, value)
        if attribute == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
        path = tmp_path / "evil.dcm"
        ds.save_as(path, enforce_file_format=True)
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    results = send_files([path], "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    assert results[0].status in (int(StoreStatus.MISSING_IDENTIFIERS), None)
    assert count(node, Instance) == 0
    assert files_under(node.store.root) == []
    assert not list(tmp_path.parent.glob("**/escape*"))
    assert not Path("/tmp/evil").exists()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("StudyInstanceUID", "1.2.03.4"),
        ("SeriesInstanceUID", "1.2.840.10008.0099.1"),
        ("SOPInstanceUID", "01.2.3"),
        ("StudyInstanceUID", "1.2." + "3" * 70),  # over-long
    ],
)
def test_uids_that_break_ps3_5_are_refused_by_name_and_not_stored(
    node: Service, attribute: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PS3.5 9.1: no leading zero in a component; at most 64 characters. Refused with 0xC001
    (MISSING_IDENTIFIERS: missing or not valid), before anything is written."""
    ds = small_dx()
    pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
    try:
        setattr(ds, attribute, value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        statuses = store_datasets(node.dicom_port, [ds])
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    assert statuses == [StoreStatus.MISSING_IDENTIFIERS]
    assert count(node, Instance) == 0
    assert count(node, Study) == 0
    assert files_under(node.store.root) == []
    refusals = [r for r in caplog.records if r.name == "dicom_node.scp"]
    assert [r.getMessage() for r in refusals] == [
        f"C-STORE refused with MISSING_IDENTIFIERS: {attribute} is not a valid UID"
    ]
    assert all(r.exc_info is None for r in caplog.records)


def test_missing_study_uid_gets_missing_identifiers_status(node: Service) -> None:
    ds = small_dx()
    del ds.StudyInstanceUID
    assert store_datasets(node.dicom_port, [ds]) == [StoreStatus.MISSING_IDENTIFIERS]
    assert count(node, Instance) == 0
    assert files_under(node.store.root) == []


def test_sop_class_mismatch_gets_a900(node: Service) -> None:
    """A request whose Affected SOP Class differs from the data set's SOP Class UID."""
    ds = small_dx()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    assert assoc.is_established
    try:
        context = assoc.accepted_contexts[0]
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = CR_IMAGE_STORAGE  # the data set says DX
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 0
        request.DataSet = BytesIO(encode(ds, is_implicit_vr=False, is_little_endian=True))
        # As send_c_store does: pause the reactor, exchange the messages, resume it.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            assoc.dimse.send_msg(request, context.context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert response is not None
        assert response.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    finally:
        assoc.release()
    assert count(node, Instance) == 0
    assert files_under(node.store.root) == []


def test_unparseable_data_set_gets_cannot_understand(node: Service, tmp_path: Path) -> None:
    ds = small_dx()
    path = tmp_path / "good.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    end = _meta_end(raw)
    # Keep the file meta, replace the data set with bytes that are not a DICOM data set.
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(raw[:end] + b"\x08\x00\x16\x00UI\xff\xff" + b"\xfe" * 64)
    results = send_files([broken], "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    assert results[0].status in (
        int(StoreStatus.CANNOT_UNDERSTAND),
        int(StoreStatus.MISSING_IDENTIFIERS),
    )
    assert count(node, Instance) == 0
    assert files_under(node.store.root) == []


def store_files_as_they_are(port: int, paths: list[Path]) -> list[int]:
    """C-STORE each file's data set bytes unparsed (even those ``send_files`` would skip)."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file meta is read, the rest streamed
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in paths]
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = previous


def test_a_header_element_pydicom_cannot_read_gets_cannot_understand(
    node: Service, tmp_path: Path
) -> None:
    """Found by fuzzing (tests/fuzz): an element of unknown VR, a US value of odd length, or a
    data set that ends inside an element's header made pydicom raise past the handler's
    refusals, answered 0110 (processing failure) instead of C000."""
    path = tmp_path / "good.dcm"
    small_dx().save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    meta, data = raw[: _meta_end(raw)], raw[_meta_end(raw) :]
    sop_instance_uid = b"\x08\x00\x18\x00UI"
    rows = b"\x28\x00\x10\x00US\x02\x00\x08\x00"
    patient_name = b"\x10\x00\x10\x00PN"
    broken = {
        "unknown-vr.dcm": data.replace(sop_instance_uid, b"\x08\x00\x18\x00U\x00"),
        "odd-length-rows.dcm": data.replace(rows, b"\x28\x00\x10\x00US\x03\x00\x08\x00\x00"),
        # after group 0008, a sequence whose 4-byte length is cut to 2: the data set ends there
        "ends-in-a-length.dcm": data[: data.index(patient_name)]
        + b"\x08\x00\x40\x11SQ\x00\x00\x26\x00",
    }
    paths = []
    for name, body in broken.items():
        assert body != data
        paths.append(tmp_path / name)
        paths[-1].write_bytes(meta + body)
    assert store_files_as_they_are(node.dicom_port, paths) == [StoreStatus.CANNOT_UNDERSTAND] * 3
    # ``fracture-gateway send`` reads the file before sending: the last one is no DICOM file
    (cut,) = send_files(paths[2:], "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    assert (cut.status, cut.error) == (None, "not a DICOM file: error")
    assert count(node, Instance) == 0
    assert files_under(node.store.root) == []


def test_a_sequence_in_place_of_a_uid_gets_missing_identifiers(
    node: Service, tmp_path: Path
) -> None:
    """Found by fuzzing: Study Instance UID encoded as a sequence whose item holds LUT Data
    (US or OW) without its LUT Descriptor. Printing the sequence as the UID read the item,
    and pydicom raised AttributeError (answered 0110); it is now no valid UID (C001)."""
    ds = small_dx()
    del ds.StudyInstanceUID
    data = bytearray(encode(ds, is_implicit_vr=False, is_little_endian=True))
    lut_data = struct.pack("<HH2sHI", 0x0028, 0x3006, b"UN", 0, 4) + b"\x00\x01\x00\x02"
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(lut_data)) + lut_data
    study_uid = struct.pack("<HH2sHI", 0x0020, 0x000D, b"SQ", 0, len(item)) + item
    series_uid = b"\x20\x00\x0e\x00UI"
    at = data.index(series_uid)  # (0020,000D) goes right before (0020,000E)
    data[at:at] = study_uid
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path = tmp_path / "sequence-as-uid.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta.getvalue() + bytes(data))
    assert store_files_as_they_are(node.dicom_port, [path]) == [StoreStatus.MISSING_IDENTIFIERS]
    assert count(node, Instance) == 0


def test_malformed_shared_files_never_leave_partial_state(node: Service, shared_dir: Path) -> None:
    edge = shared_dir / "dicom/pydicom/src/pydicom/data/test_files"
    candidates = [edge / "no_meta_group_length.dcm", edge / "rtplan_truncated.dcm"]
    candidates = [p for p in candidates if p.exists()]
    results = send_files(candidates, "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    for result in results:
        if result.status == 0:
            continue
        assert result.status is None or result.status >= 0xA000
    stored = {r.storage_path for r in stored_rows(node)}
    on_disk = {str(p.relative_to(node.store.root)) for p in files_under(node.store.instances_dir)}
    assert stored == on_disk
    assert files_under(node.store.tmp_dir) == []


def test_identical_resend_is_idempotent(node: Service, shared_dir: Path) -> None:
    dx = shared_dir / "dicom/highdicom/data/test_files/dx_image.dcm"
    first = send_files([dx, dx], "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    second = send_files([dx], "127.0.0.1", node.dicom_port, CALLED, "TESTSCU")
    assert [r.status for r in first + second] == [0, 0, 0]
    assert count(node, Instance) == 1
    assert len(files_under(node.store.instances_dir)) == 1
    assert files_under(node.store.conflicts_dir) == []


@pytest.mark.parametrize("policy", ["keep_first", "replace", "reject"])
def test_conflicting_duplicate_follows_policy(start_node: NodeFactory, policy: str) -> None:
    node = start_node(node={"duplicate_policy": policy})
    original = small_dx()
    changed = copy.deepcopy(original)
    changed.PixelData = bytes(reversed(range(64)))
    assert store_datasets(node.dicom_port, [original]) == [0]
    status = store_datasets(node.dicom_port, [changed])[0]
    (row,) = stored_rows(node)
    stored = dcmread(node.store.absolute(row.storage_path))
    if policy == "keep_first":
        assert status == 0
        assert stored.PixelData == original.PixelData
        (kept,) = files_under(node.store.conflicts_dir)
        assert dcmread(kept).PixelData == changed.PixelData  # nothing accepted is lost
    elif policy == "replace":
        assert status == 0
        assert stored.PixelData == changed.PixelData
        assert len(files_under(node.store.instances_dir)) == 1
    else:
        assert status == StoreStatus.DUPLICATE_CONFLICT
        assert stored.PixelData == original.PixelData
        assert files_under(node.store.conflicts_dir) == []


def test_abort_mid_transfer_leaves_nothing_behind(node: Service) -> None:
    """Half of a C-STORE's P-DATA PDUs, then A-ABORT: nothing of it may remain."""
    ds = small_dx()
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelData = b"\x01\x02" * (1024 * 1024)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = DX_PRESENTATION_STORAGE
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 0
    request.DataSet = BytesIO(encode(ds, is_implicit_vr=False, is_little_endian=True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = list(message.encode_msg(assoc.accepted_contexts[0].context_id, 16384))
    assert len(pdus) > 100
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    socket = assoc.dul.socket
    assert socket is not None
    for primitive in pdus[: len(pdus) // 2]:
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        socket.send(pdu.encode())
    assoc._reactor_checkpoint.set()
    assoc.abort()
    time.sleep(1.0)
    assert count(node, Instance) == 0
    assert files_under(node.store.root) == []


def test_study_and_series_rows_group_instances(node: Service) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = [
        small_dx(
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            InstanceNumber=i,
            AccessionNumber="A123",
            StudyDescription="XR WRIST 2 VIEWS",
            PatientSex="F",
            PatientAge="045Y",
        )
        for i in range(3)
    ]
    assert store_datasets(node.dicom_port, datasets) == [0, 0, 0]
    assert count(node, Study) == 1
    assert count(node, Series) == 1
    with node.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.study_instance_uid == study_uid
        assert study.patient_id == "SMALL-1"
        # What the worklist shows, read from the header at ingest.
        assert (study.accession_number, study.study_description) == ("A123", "XR WRIST 2 VIEWS")
        assert (study.patient_sex, study.patient_age) == ("F", "045Y")
        assert len(study.instances) == 3
