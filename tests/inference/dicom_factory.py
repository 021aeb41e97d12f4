"""Small, valid DICOM images built with pydicom for tests, and the "one picture, two paths" wrapper.

Every dataset made here goes through a real write -> read round trip with pydicom's writing
validation set to raise, so tests see what a file on disk (or a C-STORE) would give them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import config, dcmread, uid
from pydicom.dataset import Dataset, FileMetaDataset

#: Digital X-Ray Image Storage - For Presentation (PS3.4 B.5).
DX_FOR_PRESENTATION = uid.DigitalXRayImageStorageForPresentation
#: Secondary Capture Image Storage (PS3.4 B.5).
SECONDARY_CAPTURE = uid.SecondaryCaptureImageStorage


@contextmanager
def _strict_writing() -> Iterator[None]:
    """pydicom's writing validation raises inside this block (restored afterwards)."""
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.RAISE
    try:
        yield
    finally:
        config.settings.writing_validation_mode = previous


def round_trip(ds: Dataset) -> Dataset:
    """Write ``ds`` as a DICOM file in memory (validation raising) and read it back."""
    buffer = io.BytesIO()
    with _strict_writing():
        ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def make_image(
    pixels: NDArray[np.generic],
    *,
    photometric: str = "MONOCHROME2",
    bits_allocated: int | None = None,
    bits_stored: int | None = None,
    transfer_syntax: str = uid.ExplicitVRLittleEndian,
    sop_class: str = DX_FOR_PRESENTATION,
    write: bool = True,
    **attributes: Any,
) -> Dataset:
    """A single-frame image with ``pixels`` (``rows x cols`` or ``rows x cols x 3``).

    Bits Allocated follows the dtype, Pixel Representation its signedness; ``attributes`` are
    set as keywords (``WindowCenter=...``). Native transfer syntaxes only; use
    :func:`compressed` for the others. Identifiers are synthetic UIDs, no patient data.
    """
    pixels = np.ascontiguousarray(pixels)
    colour = pixels.ndim == 3
    allocated = bits_allocated or pixels.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = uid.UID(sop_class)
    ds.SOPClassUID = uid.UID(sop_class)
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.Modality = "DX" if sop_class == DX_FOR_PRESENTATION else "OT"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    big_endian = transfer_syntax == uid.ExplicitVRBigEndian
    stored = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    return round_trip(ds) if write else ds


def compressed(ds: Dataset, transfer_syntax: str, **encoding_options: Any) -> Dataset:
    """A compressed copy of ``ds`` (pydicom's encoders: RLE, JPEG-LS, JPEG 2000), re-read."""
    copy = dcmread(io.BytesIO(_to_bytes(ds)))
    copy.compress(transfer_syntax, **encoding_options)
    return round_trip(copy)


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    with _strict_writing():
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class PictureVariant(StrEnum):
    """How :func:`wrap_picture_as_dicom` stores a grey picture."""

    #: (a) 8-bit MONOCHROME2, the picture's values as they are.
    STRAIGHT_8BIT = "a"
    #: (b) 12-bit MONOCHROME2 holding ``value * 16``, a window that maps back to the picture.
    WINDOWED_12BIT = "b"
    #: (c) 8-bit MONOCHROME1 holding ``255 - value`` (shown inverted, so identical on screen).
    INVERTED_MONOCHROME1 = "c"


def wrap_picture_as_dicom(grey_uint8: NDArray[np.uint8], variant: PictureVariant | str) -> Dataset:
    """Store a grey 8-bit picture as a Secondary Capture image in one of three encodings.

    All three are displayed as the picture itself: (a) directly, (b) through Window Center
    2040.5 / Width 4081 (LINEAR, PS3.3 C.11.2.1.2.1: ``y = x / 4080`` for ``x = 16 v``), (c)
    through the MONOCHROME1 inversion.
    """
    if grey_uint8.dtype != np.uint8 or grey_uint8.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 picture, got {grey_uint8.dtype} {grey_uint8.shape}")
    variant = PictureVariant(variant)
    if variant is PictureVariant.STRAIGHT_8BIT:
        return make_image(grey_uint8, sop_class=SECONDARY_CAPTURE)
    if variant is PictureVariant.WINDOWED_12BIT:
        return make_image(
            grey_uint8.astype(np.uint16) * 16,
            bits_stored=12,
            sop_class=SECONDARY_CAPTURE,
            WindowCenter="2040.5",
            WindowWidth="4081",
        )
    return make_image(
        (255 - grey_uint8).astype(np.uint8),
        photometric="MONOCHROME1",
        sop_class=SECONDARY_CAPTURE,
    )
