"""The stream parsers of ``inference.streams``: real files agree with their headers; crafted
streams that contradict them, are cut short or are too small for their size are refused."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import uid
from pydicom.encaps import generate_frames

from inference.streams import (
    Codec,
    DeclaredFrame,
    Process,
    StreamMismatch,
    check_frame,
    codec_of,
    j2k_size,
    jpeg_frame,
    minimum_jpeg_length,
    minimum_rle_segment_length,
    native_length,
    rle_decoded_length,
    rle_offsets,
)
from tests.inference.dicom_factory import compressed, make_image

TF = "pydicom/src/pydicom/data/test_files"
PD = "pydicom-data/data_store/data"
LJ = "pylibjpeg-data/ljdata/ds"
WG04 = "robyoung-dicom-test-files/data/WG04"

#: Real encapsulated files of every codec, with odd cases: YBR 4:2:2 JPEG, sampling factors
#: other than 1, 0xFF and space padding after EOI, JP2-wrapped JPEG 2000 codestreams.
REAL_FRAMES = [
    f"{LJ}/JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm",
    f"{TF}/SC_rgb_small_odd_jpeg.dcm",
    f"{TF}/JPGExtended.dcm",
    f"{LJ}/JPEGLossless/JPEGLossless_1s_1f_u_16_12.dcm",
    f"{LJ}/JPEGLosslessSV1/JPEGLosslessP14SV1_1s_1f_u_16_16.dcm",
    f"{PD}/JPEG-LL.dcm",
    f"{TF}/MR_small_jpeg_ls_lossless.dcm",
    f"{WG04}/JLSN/RG3_JLSN",
    f"{TF}/693_J2KI.dcm",
    f"{PD}/RG3_J2KR.dcm",
    f"{PD}/HTJ2KLossless_08_RGB.dcm",
    f"{TF}/GDCMJ2K_TextGBR.dcm",
    f"{LJ}/JPEG2000/ELSCINT1_JP2vsJ2K.dcm",
    f"{LJ}/JPEG2000/MAROTECH_CT_JP2Lossy.dcm",
    f"{LJ}/JPEG2000Lossless/NM_Kakadu44_SOTmarkerincons.dcm",
    f"{TF}/MR_small_RLE.dcm",
    f"{TF}/SC_rgb_rle_32bit.dcm",
    f"{WG04}/RLE/RG2_RLE",
]


def declared(ds: pydicom.Dataset) -> DeclaredFrame:
    return DeclaredFrame(
        int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel), int(ds.BitsAllocated)
    )


def first_frame(ds: pydicom.Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def jpeg_stream(columns: int, rows: int) -> bytes:
    """A grey baseline JPEG from Pillow (T.81 SOF0)."""
    pixels = (np.arange(columns * rows) % 251).astype(np.uint8).reshape(rows, columns)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def with_sof_size(stream: bytes, columns: int, rows: int) -> bytes:
    """``stream`` with its SOF0 claiming another size (B.2.2: P, then Y, then X)."""
    pos = stream.index(b"\xff\xc0")
    return stream[: pos + 5] + struct.pack(">HH", rows, columns) + stream[pos + 9 :]


@pytest.mark.parametrize("path", REAL_FRAMES)
def test_real_frames_agree_with_their_headers(shared_dir: Path, path: str) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / path)
    codec = codec_of(ds.file_meta.TransferSyntaxUID)
    assert codec is not None
    check_frame(first_frame(ds), codec, declared(ds))


def test_jpeg_frame_header_fields() -> None:
    frame = jpeg_frame(jpeg_stream(40, 24))
    assert (frame.header.columns, frame.header.rows) == (40, 24)
    assert (frame.header.components, frame.header.precision) == (1, 8)
    assert (frame.process, frame.arithmetic, frame.complete) == (Process.SEQUENTIAL, False, True)
    assert minimum_jpeg_length(frame) == 4  # 5 x 3 blocks, 2 bits each: 30 bits


def test_jpeg_ls_frame_header(shared_dir: Path) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / TF / "MR_small_jpeg_ls_lossless.dcm")
    frame = jpeg_frame(first_frame(ds))
    assert frame.process is Process.JPEG_LS
    assert (frame.header.columns, frame.header.rows, frame.header.precision) == (64, 64, 16)
    assert minimum_jpeg_length(frame) == 8  # one bit a line


def test_jp2_wrapper_is_opened(shared_dir: Path) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / LJ / "JPEG2000/ELSCINT1_JP2vsJ2K.dcm")
    stream = first_frame(ds)
    assert not stream.startswith(b"\xff\x4f")  # a JP2 file, not a bare codestream
    header, complete = j2k_size(stream)
    assert (header.columns, header.rows, header.components) == (512, 512, 1)
    assert complete
    ds.Rows = 500
    with pytest.raises(StreamMismatch, match=r"512x512x1 .* declares 512x500x1"):
        check_frame(stream, Codec.JPEG_2000, declared(ds))


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff\xe0\x00\x10JFIF",  # a segment longer than the stream
        b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00\x00\x00\x08jp2c",  # JP2 box without a codestream
        b"GIF89a" + b"\x00" * 40,
    ],
)
def test_streams_that_are_not_what_they_claim(stream: bytes) -> None:
    declared_frame = DeclaredFrame(8, 8, 1, 8)
    for codec in (Codec.JPEG, Codec.JPEG_LS, Codec.JPEG_2000):
        with pytest.raises(StreamMismatch):
            check_frame(stream, codec, declared_frame)


def test_jpeg_under_a_jpeg_ls_syntax_is_refused() -> None:
    with pytest.raises(StreamMismatch, match="sequential DCT frame under a JPEG-LS"):
        check_frame(jpeg_stream(16, 16), Codec.JPEG_LS, DeclaredFrame(16, 16, 1, 8))


def test_jpeg_size_mismatch_and_precision_beyond_bits_allocated() -> None:
    stream = jpeg_stream(16, 16)
    with pytest.raises(StreamMismatch, match=r"holds 20000x20000x1 .* declares 16x16x1"):
        check_frame(with_sof_size(stream, 20000, 20000), Codec.JPEG, DeclaredFrame(16, 16, 1, 8))
    with pytest.raises(StreamMismatch, match="declares 16x16x3"):
        check_frame(stream, Codec.JPEG, DeclaredFrame(16, 16, 3, 8))
    pos = stream.index(b"\xff\xc0")
    twelve_bit = stream[: pos + 4] + b"\x0c" + stream[pos + 5 :]
    with pytest.raises(StreamMismatch, match="12-bit samples, the header allocates 8"):
        check_frame(twelve_bit, Codec.JPEG, DeclaredFrame(16, 16, 1, 8))
    check_frame(twelve_bit, Codec.JPEG, DeclaredFrame(16, 16, 1, 16))


def test_a_cut_jpeg_stream_is_refused() -> None:
    stream = jpeg_stream(64, 64)
    with pytest.raises(StreamMismatch, match="does not end with EOI"):
        check_frame(stream[: len(stream) // 2], Codec.JPEG, DeclaredFrame(64, 64, 1, 8))
    for padding in (b"\x00", b"\xff", b" "):  # PS3.5 A.4 padding seen in real files
        check_frame(stream + padding, Codec.JPEG, DeclaredFrame(64, 64, 1, 8))


def test_a_stream_too_small_for_its_size_is_refused() -> None:
    """The 354-byte JPEG of a 10000 x 10000 CR: complete, consistent, and impossible."""
    stream = with_sof_size(jpeg_stream(16, 16), 10000, 10000)
    assert len(stream) < 1000
    with pytest.raises(StreamMismatch, match="needs at least 390625"):
        check_frame(stream, Codec.JPEG, DeclaredFrame(10000, 10000, 1, 8))


def test_a_number_of_lines_left_to_a_missing_dnl_is_refused() -> None:
    stream = with_sof_size(jpeg_stream(16, 16), 16, 0)
    with pytest.raises(StreamMismatch, match="no number of lines"):
        check_frame(stream, Codec.JPEG, DeclaredFrame(16, 16, 1, 8))


def test_cut_jpeg2000_codestream_is_refused() -> None:
    ds = compressed(
        make_image(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)), uid.JPEG2000Lossless
    )
    stream = first_frame(ds)
    check_frame(stream, Codec.JPEG_2000, declared(ds))
    with pytest.raises(StreamMismatch, match="does not end with EOC"):
        check_frame(stream[:-40], Codec.JPEG_2000, declared(ds))
    with pytest.raises(StreamMismatch, match="SIZ segment"):
        check_frame(stream[:20], Codec.JPEG_2000, declared(ds))


def rle_frame(rows: int = 48, columns: int = 64) -> tuple[bytes, DeclaredFrame]:
    pixels = (np.arange(rows * columns, dtype=np.uint16) * 37 % 4096).reshape(rows, columns)
    ds = compressed(make_image(pixels, bits_stored=12), uid.RLELossless)
    return first_frame(ds), declared(ds)


def test_rle_header_checks() -> None:
    frame, declared_frame = rle_frame()
    assert rle_offsets(frame)[0] == 64
    check_frame(frame, Codec.RLE, declared_frame)
    with pytest.raises(StreamMismatch, match="2 segments, 3 samples of 16 bits need 6"):
        check_frame(frame, Codec.RLE, DeclaredFrame(48, 64, 3, 16))
    with pytest.raises(StreamMismatch, match="2 segments, 1 samples of 8 bits need 1"):
        check_frame(frame, Codec.RLE, DeclaredFrame(48, 64, 1, 8))
    swapped = struct.pack("<3I", 2, 64, 60) + frame[12:]
    with pytest.raises(StreamMismatch, match="do not increase"):
        check_frame(swapped, Codec.RLE, declared_frame)
    beyond = struct.pack("<3I", 2, 64, len(frame) + 10) + frame[12:]
    with pytest.raises(StreamMismatch, match="do not increase"):
        check_frame(beyond, Codec.RLE, declared_frame)
    with pytest.raises(StreamMismatch, match="declares 0 segments"):
        check_frame(b"\x00" * 64, Codec.RLE, declared_frame)
    with pytest.raises(StreamMismatch, match="no complete header"):
        check_frame(frame[:40], Codec.RLE, declared_frame)


def test_rle_segments_too_short_for_the_declared_size() -> None:
    frame, _ = rle_frame()
    with pytest.raises(StreamMismatch, match="needs at least"):
        check_frame(frame, Codec.RLE, DeclaredFrame(4800, 6400, 1, 16))


@pytest.mark.parametrize(
    ("segment", "decoded"),
    [
        (b"\x02abc", 3),  # literal run of 3 (PS3.5 G.3.1)
        (b"\xfea", 3),  # 'a' repeated 3 times
        (b"\x80", 0),  # no-op
        (b"\x81a", 128),  # the longest replicate run
        (b"\x7f" + b"x" * 128, 128),  # the longest literal run
        (b"\x00a\x00", 1),  # a trailing header byte pads the segment to even length
        (b"\x05ab", 2),  # a literal run cut short counts what is there
    ],
)
def test_rle_decoded_length_table(segment: bytes, decoded: int) -> None:
    assert rle_decoded_length(segment) == decoded


def test_rle_minimum_segment_length() -> None:
    assert minimum_rle_segment_length(1, 1) == 2
    assert minimum_rle_segment_length(16, 8) == 2
    assert minimum_rle_segment_length(16, 9) == 4
    assert minimum_rle_segment_length(10000, 10000) == 1_562_500


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 300), st.integers(8, 300), st.integers(0, 255))
def test_the_most_compressible_images_pass_the_length_bounds(
    rows: int, columns: int, value: int
) -> None:
    """Constant images are every coder's best case; real encoders must stay above the bounds.

    (JPEG-LS is left out: its bound is one bit a line. GDCM's RLE encoder aborts the process on
    some of these images, so pylibjpeg-rle encodes.)
    """
    constant = np.full((rows, columns), value, dtype=np.uint8)
    ds = compressed(make_image(constant), uid.RLELossless, encoding_plugin="pylibjpeg")
    check_frame(first_frame(ds), Codec.RLE, declared(ds))
    for progressive in (False, True):
        buffer = io.BytesIO()
        Image.fromarray(constant).save(
            buffer, format="JPEG", optimize=True, progressive=progressive
        )
        check_frame(buffer.getvalue(), Codec.JPEG, DeclaredFrame(rows, columns, 1, 8))


@pytest.mark.parametrize(
    ("rows", "columns", "samples", "bits", "photometric", "length"),
    [
        (48, 64, 1, 16, "MONOCHROME2", 6144),
        (3, 3, 3, 8, "RGB", 27),
        (100, 100, 3, 8, "YBR_FULL_422", 20000),
        (100, 100, 3, 8, "YBR_FULL", 30000),
        (10, 10, 1, 32, "MONOCHROME2", 400),
    ],
)
def test_native_length_table(
    rows: int, columns: int, samples: int, bits: int, photometric: str, length: int
) -> None:
    assert native_length(rows, columns, samples, bits, 1, photometric) == length
