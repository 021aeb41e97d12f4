"""The one-image path: an uploaded PNG, JPEG or DICOM image -> probability and heat map.

Nothing is kept unless the caller asks: with ``store`` a DICOM upload is stored and recorded
through the node's normal ingest path (so it is grouped and analysed like a received instance);
pictures cannot be stored, they carry no identifiers to file them under.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from sqlalchemy.orm import Session, sessionmaker

from api.schemas import Point, PredictOut, RegionOut
from config.settings import Settings
from dicom_node.conformance import RADIOGRAPH_SOP_CLASSES
from dicom_node.storage import InstanceStore
from inference.errors import NotAnalysable, Reason
from inference.picture import PictureError, read_picture
from inference.pixels import display_grey, to_model_input
from inference.preprocess import PreparedImage, prepare
from inference.scope import check_in_scope
from reporting.render import (
    RegionMark,
    blend_heatmap,
    draw_regions,
    fit_long_side,
    render_png,
    resize_plane,
)
from reporting.sc import SOLID_POINT

if TYPE_CHECKING:
    from inference.predictor import Predictor

#: Largest accepted upload.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: Long side of the returned heat-map picture.
HEATMAP_SIZE = 1024
#: Calling AE title recorded for instances stored from an upload.
UPLOAD_AE_TITLE = "API-UPLOAD"

#: A Modality value worth repeating in a message: a Code String (PS3.5 6.2), at most 16 characters.
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")

#: Predictions run one at a time: the model is shared and the machine has few cores.
_predict_lock = threading.Lock()


class UploadRejected(ValueError):  # noqa: N818 - reads as what happened
    """An upload that cannot be analysed; the message names no patient data."""


@dataclass(frozen=True, slots=True)
class Upload:
    """An uploaded image, decoded: the model input, the display grey, and its origin."""

    prepared: PreparedImage
    grey: np.ndarray
    width: int
    height: int
    dataset: Dataset | None
    truncated: bool


def is_dicom(data: bytes) -> bool:
    """PS3.10 7.1: a 128-byte preamble then ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def check_radiograph(ds: Dataset) -> None:
    """Refuse a DICOM upload the model does not cover, before any pixel is decoded.

    The rule is the node's (``pipeline.study.classify_instance``): a CR or DX image storage
    SOP Class (PS3.4 B.5, :data:`dicom_node.conformance.RADIOGRAPH_SOP_CLASSES`). A CT, MR or
    ultrasound image would otherwise get a fracture probability that means nothing. The
    message names the SOP Class and Modality, never patient data; a value that is not a
    well-formed UID or Code String is not repeated.

    Raises
    ------
    UploadRejected
        For any other SOP Class, or none.
    """
    sop_class = str(ds.get("SOPClassUID", "")).strip()
    if sop_class in RADIOGRAPH_SOP_CLASSES:
        return
    uid = UID(sop_class)
    sop_name = (uid.name if uid.is_valid else "not a valid UID") if sop_class else "absent"
    modality = str(ds.get("Modality", "")).strip()
    if not _CODE_STRING.fullmatch(modality):
        modality = "absent" if not modality else "not a valid code"
    raise UploadRejected(
        f"the model covers CR and DX radiographs only; this DICOM image is "
        f"SOP Class {sop_name}, Modality {modality}"
    )


def decode_upload(
    data: bytes, size: int, *, crop: bool, body_parts: Collection[str] = ()
) -> Upload:
    """Turn the upload into a model input through the same pipeline as received images.

    A DICOM upload outside the model's scope (``body_parts``, see :mod:`inference.scope`) is
    refused as not applicable, as a received image would be.
    """
    if not data:
        raise UploadRejected("the upload is empty")
    if is_dicom(data):
        try:
            ds = dcmread(io.BytesIO(data))
            check_radiograph(ds)
            check_in_scope(ds, body_parts)
            prepared = to_model_input(ds, size, crop=crop)
            grey = display_grey(ds, max_size=HEATMAP_SIZE)
        except UploadRejected:
            raise
        except NotAnalysable as exc:
            if exc.reason == Reason.OUT_OF_SCOPE:
                raise UploadRejected(exc.message) from exc  # names no patient data
            raise UploadRejected(f"the DICOM image cannot be analysed ({exc.reason})") from exc
        except (
            InvalidDicomError,
            AttributeError,
            ValueError,
            TypeError,
            KeyError,
            EOFError,
        ) as exc:
            raise UploadRejected(f"the DICOM file cannot be read ({type(exc).__name__})") from exc
        transform = prepared.transform
        return Upload(
            prepared,
            grey,
            transform.original_width,
            transform.original_height,
            ds,
            truncated=False,
        )
    try:
        picture, truncated = read_picture(data)
    except PictureError as exc:
        raise UploadRejected(f"not a DICOM file, PNG or JPEG picture: {exc}") from exc
    height, width = picture.shape
    if min(height, width) < 8:
        raise UploadRejected(f"the picture of {width} x {height} pixels is too small")
    rows, columns = fit_long_side(height, width, minimum=1, maximum=HEATMAP_SIZE)
    grey = resize_plane(picture, rows, columns)
    return Upload(prepare(picture, size, crop=crop), grey, width, height, None, truncated)


def predict_upload(
    predictor: Predictor, settings: Settings, upload: Upload, *, with_heatmap: bool
) -> PredictOut:
    """Run the model on one decoded upload."""
    card = predictor.card
    with _predict_lock:
        result = predictor.predict([upload.prepared], batch_size=1)[0]
    point_name = settings.inference.operating_point
    threshold = next(
        point.threshold for name, point in card.operating_points.items() if name.value == point_name
    )
    heatmap_b64: str | None = None
    if with_heatmap:
        heat = resize_plane(result.heatmap_on_original(), *upload.grey.shape)
        picture = blend_heatmap(upload.grey, heat)
        scale = (upload.grey.shape[1] / upload.width, upload.grey.shape[0] / upload.height)
        marks = [
            RegionMark(
                r.x0,
                r.y0,
                r.x1,
                r.y1,
                f"{n}: {r.probability:.2f}",
                SOLID_POINT in r.operating_points,
            )
            for n, r in enumerate(result.regions, start=1)
        ]
        picture = draw_regions(picture, marks, scale, unit=max(picture.shape[:2]) / 1000.0)
        heatmap_b64 = base64.b64encode(render_png(picture)).decode()
    peak_x, peak_y = result.peak_on_original()
    peak = (
        Point(x=peak_x, y=peak_y)
        if 0 <= peak_x < upload.width and 0 <= peak_y < upload.height
        else None
    )
    return PredictOut(
        source="dicom" if upload.dataset is not None else "picture",
        probability=result.probability,
        positive=result.probability >= threshold,
        operating_point=point_name,
        threshold=threshold,
        labels={name.value: value for name, value in result.labels.items()},
        model_name=card.name,
        model_version=card.version,
        width=upload.width,
        height=upload.height,
        peak=peak,
        # The same rounding as the stored regions the study view returns.
        regions=[RegionOut.model_validate(r.to_json()) for r in result.regions],
        truncated=upload.truncated,
        heatmap_png_base64=heatmap_b64,
        stored=False,
        study_id=None,
    )


def store_upload(
    settings: Settings,
    sessions: sessionmaker[Session],
    store: InstanceStore,
    ds: Dataset,
) -> str:
    """Store an uploaded DICOM data set through the ingest path; return its Study Instance UID.

    The data set is written with file meta built as for a C-STORE (PS3.10 7.1) in its own
    transfer syntax; the header checks, duplicate policy and study grouping are the node's.
    """
    from dicom_node.ingest import IngestRefusedError, ingest_encoded

    try:
        transfer_syntax = ds.file_meta.TransferSyntaxUID
        sop_class = str(ds.SOPClassUID)
        sop_instance = str(ds.SOPInstanceUID)
    except AttributeError as exc:
        raise UploadRejected("the DICOM file lacks its SOP identifiers") from exc
    if transfer_syntax.is_deflated:
        raise UploadRejected("deflated DICOM files cannot be stored from an upload")
    buffer = DicomBytesIO()
    buffer.is_little_endian = transfer_syntax.is_little_endian
    buffer.is_implicit_VR = transfer_syntax.is_implicit_VR
    body = Dataset(ds)
    body.file_meta = Dataset()  # type: ignore[assignment]
    write_dataset(buffer, body)
    try:
        _, header = ingest_encoded(
            sessions,
            store,
            buffer.getvalue(),
            transfer_syntax=str(transfer_syntax),
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            calling_ae_title=UPLOAD_AE_TITLE,
            duplicate_policy=settings.node.duplicate_policy,
        )
    except IngestRefusedError as exc:
        raise UploadRejected(f"the DICOM data set is not acceptable: {exc.reason}") from exc
    return header.study_instance_uid
