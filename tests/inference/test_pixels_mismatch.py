"""Pixel Data that contradicts its header is refused before anything is decoded.

Each test reproduces a fault of the pipeline before these checks: a CR declaring 10000 x 10000
pixels whose JPEG holds a few hundred bytes was decoded into a mostly blank image and analysed;
a JPEG whose stream is far larger than its header was decoded in full (gigabytes) before its
shape was compared; a header edited after compression was decoded and only then compared.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from inference.decode import check_analysable, check_decoded, decode_image
from inference.errors import NotAnalysable, Reason
from inference.pixels import display_grey, to_model_input
from inference.streams import MISMATCH
from tests.inference.dicom_factory import compressed, make_image, round_trip
from tests.inference.test_pixels_syntaxes import SYNTAX_FILES

CR = uid.ComputedRadiographyImageStorage
ENCAPSULATED = sorted(
    (syntax, path) for syntax, path in SYNTAX_FILES.items() if uid.UID(syntax).is_encapsulated
)


def refusal(ds: Dataset) -> NotAnalysable:
    """The refusal of ``ds``, from the header checks alone and then from the whole path."""
    with pytest.raises(NotAnalysable) as header_only:
        check_analysable(ds)
    with pytest.raises(NotAnalysable) as whole:
        to_model_input(ds, 64)
    assert whole.value.reason == header_only.value.reason
    return header_only.value


def jpeg_stream(columns: int, rows: int) -> bytes:
    pixels = (np.arange(columns * rows) % 251).astype(np.uint8).reshape(rows, columns)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def with_sof_size(stream: bytes, columns: int, rows: int) -> bytes:
    pos = stream.index(b"\xff\xc0")
    return stream[: pos + 5] + struct.pack(">HH", rows, columns) + stream[pos + 9 :]


def jpeg_radiograph(rows: int, columns: int, stream: bytes) -> Dataset:
    """An 8-bit CR declaring ``rows x columns``, its Pixel Data the one JPEG ``stream``."""
    ds = make_image(np.zeros((8, 8), dtype=np.uint8), sop_class=CR, write=False)
    ds.Modality = "CR"
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    return round_trip(ds)


def test_a_10000_squared_cr_with_a_tiny_jpeg_is_refused_not_analysed() -> None:
    stream = with_sof_size(jpeg_stream(16, 16), 10000, 10000)  # SOF agrees with the header
    assert len(stream) < 500
    ds = jpeg_radiograph(10000, 10000, stream)
    error = refusal(ds)
    assert error.reason == Reason.PIXEL_DATA_MISMATCH
    assert error.message.startswith(MISMATCH)
    assert "needs at least 390625" in error.message


def test_a_cut_jpeg_is_refused() -> None:
    stream = jpeg_stream(64, 64)
    ds = jpeg_radiograph(64, 64, stream[: len(stream) // 2])
    assert "does not end with EOI" in refusal(ds).message


def test_a_jpeg_far_larger_than_its_header_is_refused_without_decoding_it() -> None:
    ds = jpeg_radiograph(64, 64, with_sof_size(jpeg_stream(64, 64), 20000, 20000))
    with pytest.raises(NotAnalysable):
        check_analysable(ds)
    tracemalloc.start()
    try:
        with pytest.raises(NotAnalysable) as info:
            to_model_input(ds, 224)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == Reason.PIXEL_DATA_MISMATCH
    assert "20000x20000x1" in info.value.message
    assert peak < 1_000_000  # bytes; decoding the stream took 3 GB


@pytest.mark.parametrize(("syntax", "path"), ENCAPSULATED, ids=[s.name for s, _ in ENCAPSULATED])
@pytest.mark.parametrize("keyword", ["Rows", "Columns"])
def test_a_size_edited_after_compression_is_refused(
    shared_dir: Path, syntax: uid.UID, path: str, keyword: str
) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / path)
    setattr(ds, keyword, int(getattr(ds, keyword)) + 8)
    error = refusal(ds)
    assert error.reason == Reason.PIXEL_DATA_MISMATCH, error.message


@pytest.mark.parametrize(("syntax", "path"), ENCAPSULATED, ids=[s.name for s, _ in ENCAPSULATED])
def test_samples_per_pixel_other_than_the_stream_is_refused(
    shared_dir: Path, syntax: uid.UID, path: str
) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / path)
    if int(ds.SamplesPerPixel) == 1:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    assert refusal(ds).reason == Reason.PIXEL_DATA_MISMATCH


@pytest.mark.parametrize(
    "syntax", [uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless]
)
def test_16_bit_samples_under_an_8_bit_header_are_refused(shared_dir: Path, syntax: str) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / SYNTAX_FILES[syntax])
    assert int(ds.BitsAllocated) == 16
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    assert refusal(ds).reason == Reason.PIXEL_DATA_MISMATCH


def small_image() -> Dataset:
    pixels = (np.arange(64 * 48, dtype=np.uint16) * 37 % 4096).reshape(48, 64)
    return make_image(pixels, bits_stored=12)


def test_a_cut_rle_fragment_is_refused() -> None:
    ds = compressed(small_image(), uid.RLELossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    assert "RLE" in refusal(ds).message


@pytest.mark.parametrize("delta", [-8, -1, 1])
def test_rle_segments_longer_or_shorter_than_the_header_are_refused(
    shared_dir: Path, delta: int
) -> None:
    """RLE has no size of its own; fewer Rows than the segments hold made pylibjpeg-rle panic
    (a ``PanicException``, a ``BaseException`` that no ``except Exception`` catches)."""
    ds = pydicom.dcmread(shared_dir / "dicom" / SYNTAX_FILES[uid.RLELossless])
    ds.Rows = int(ds.Rows) + delta
    error = refusal(ds)
    assert error.reason == Reason.PIXEL_DATA_MISMATCH
    assert "decodes to 4096 bytes" in error.message


def test_a_cut_jpeg_ls_stream_is_refused() -> None:
    ds = compressed(small_image(), uid.JPEGLSLossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) - 40]])
    assert "does not end with EOI" in refusal(ds).message


def test_two_frames_under_a_single_frame_header_are_refused() -> None:
    ds = compressed(small_image(), uid.JPEG2000Lossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame, frame], has_bot=True)
    assert "offset table lists 2 frames" in refusal(ds).message


def test_native_data_of_another_bit_depth_is_refused() -> None:
    """A header saying 8 bits over 16-bit data: twice the bytes, and not padding."""
    ds = small_image()
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    error = refusal(ds)
    assert error.reason == Reason.PIXEL_DATA_MISMATCH
    assert "6144 bytes" in error.message


def test_native_trailing_zeros_and_the_odd_padding_byte_are_accepted(shared_dir: Path) -> None:
    tf = shared_dir / "dicom/pydicom/src/pydicom/data/test_files"
    padded = pydicom.dcmread(tf / "MR_small_padded.dcm")  # 128 zero bytes after the frame
    assert len(padded.PixelData) == 64 * 64 * 2 + 128
    assert decode_image(padded).pixels.shape == (64, 64)
    odd = pydicom.dcmread(tf / "SC_rgb_small_odd_big_endian.dcm")  # 27 bytes + a non-zero pad
    assert decode_image(odd).pixels.shape == (3, 3, 3)


def test_native_ybr_full_422_has_its_own_length(shared_dir: Path) -> None:
    """PS3.3 C.7.6.3.1.2: two bytes of chroma per two pixels; once refused as truncated."""
    folder = shared_dir / "dicom/pydicom/src/pydicom/data/test_files"
    ds = pydicom.dcmread(folder / "SC_ybr_full_422_uncompressed.dcm")
    assert len(ds.PixelData) == 100 * 100 * 2
    assert decode_image(ds).pixels.shape == (100, 100, 3)
    same_picture_in_rgb = display_grey(pydicom.dcmread(folder / "SC_rgb_rle.dcm"))
    difference = np.abs(display_grey(ds) - same_picture_in_rgb)
    assert float(difference.max()) < 0.01  # measured 0.0074: the halved chroma resolution


@pytest.mark.parametrize(
    ("pixels", "reduction", "accepted"),
    [
        (np.zeros((48, 64), np.uint16), 0, True),
        (np.zeros((48, 64), np.uint8), 0, True),
        (np.zeros((24, 32), np.uint16), 1, True),
        (np.zeros((12, 16), np.uint16), 2, True),
        (np.zeros((48, 63), np.uint16), 0, False),
        (np.zeros((48, 64, 3), np.uint16), 0, False),
        (np.zeros((48, 64), np.float32), 0, False),
        (np.zeros((48, 64), np.uint32), 0, False),
        (np.zeros((48, 64), np.uint16), 1, False),
    ],
)
def test_decoded_shape_and_type_against_the_header(
    pixels: np.ndarray, reduction: int, accepted: bool
) -> None:
    ds = small_image()
    if accepted:
        check_decoded(pixels, ds, reduction)
        return
    with pytest.raises(NotAnalysable) as info:
        check_decoded(pixels, ds, reduction)
    assert info.value.reason == Reason.PIXEL_DATA_MISMATCH
