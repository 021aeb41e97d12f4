"""What the pixel pipeline refuses, and that it refuses before allocating the declared image."""

from __future__ import annotations

import copy
import io
import pickle
import re
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from inference.decode import DECODING_PLUGINS
from inference.errors import NotAnalysable, Reason
from inference.pixels import check_analysable, display_grey, to_model_input
from tests.helpers.fresh import run_fresh
from tests.inference.dicom_factory import compressed, make_image


def small_image(**attributes: Any) -> Dataset:
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) % 4096
    return make_image(pixels, bits_stored=12, **attributes)


def reason_of(ds: Dataset) -> str:
    with pytest.raises(NotAnalysable) as info:
        to_model_input(ds, 32)
    return info.value.reason


def test_no_pixel_data() -> None:
    ds = small_image()
    del ds.PixelData
    assert reason_of(ds) == Reason.NO_PIXEL_DATA


def test_no_pixel_data_in_a_real_structured_report(shared_dir: Path) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom/highdicom/data/test_files/sr_document.dcm")
    assert reason_of(ds) == Reason.NO_PIXEL_DATA


def test_multi_frame() -> None:
    pixels = np.zeros((2, 8, 8), dtype=np.uint16)
    ds = make_image(pixels.reshape(16, 8), write=False)
    ds.Rows, ds.NumberOfFrames = 8, 2
    assert reason_of(ds) == Reason.MULTI_FRAME


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"Rows": 0}, Reason.DIMENSIONS),
        ({"Columns": None}, Reason.DIMENSIONS),
        ({"BitsAllocated": 64}, Reason.DIMENSIONS),
        ({"BitsAllocated": 1}, Reason.DIMENSIONS),
        ({"BitsStored": 17}, Reason.DIMENSIONS),
        ({"BitsStored": 0}, Reason.DIMENSIONS),
        ({"SamplesPerPixel": 4}, Reason.DIMENSIONS),
        ({"PixelRepresentation": 2}, Reason.DIMENSIONS),
        ({"NumberOfFrames": 0}, Reason.DIMENSIONS),
        # Type 1 attributes the decoders need: found missing by the fuzzer (tests/fuzz), which
        # made pydicom's decoder raise AttributeError past every refusal.
        ({"PixelRepresentation": None}, Reason.DIMENSIONS),
        ({"BitsStored": None}, Reason.DIMENSIONS),
        ({"SamplesPerPixel": None}, Reason.DIMENSIONS),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, Reason.UNSUPPORTED_PHOTOMETRIC),
        ({"PhotometricInterpretation": "HSV"}, Reason.UNSUPPORTED_PHOTOMETRIC),
        ({"PhotometricInterpretation": "RGB"}, Reason.UNSUPPORTED_PHOTOMETRIC),
    ],
)
def test_absurd_or_unsupported_headers(attributes: dict[str, object], reason: Reason) -> None:
    ds = small_image()
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    assert reason_of(ds) == reason


@pytest.mark.filterwarnings("ignore:Invalid value. a value for a tag with VR US:UserWarning")
@pytest.mark.parametrize("side", [65535, 100_000])
def test_huge_declared_image_is_refused_without_allocating_it(side: int) -> None:
    ds = make_image(np.zeros((4, 4), dtype=np.uint16), write=False)
    ds.Rows = ds.Columns = side  # 100000 does not even fit the US VR: an in-memory header
    tracemalloc.start()
    try:
        with pytest.raises(NotAnalysable) as info:
            to_model_input(ds, 224)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == Reason.DIMENSIONS
    assert peak < 1_000_000  # bytes; the declared image would need gigabytes


def test_limit_is_configurable() -> None:
    ds = small_image()
    check_analysable(ds, max_pixels=64 * 48)
    with pytest.raises(NotAnalysable, match="exceeds"):
        check_analysable(ds, max_pixels=64 * 48 - 1)


def test_truncated_native_pixel_data() -> None:
    ds = small_image()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    assert reason_of(ds) == Reason.TRUNCATED


def test_unsupported_transfer_syntax() -> None:
    ds = small_image()
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    assert reason_of(ds) == Reason.UNSUPPORTED_TRANSFER_SYNTAX
    del ds.file_meta.TransferSyntaxUID
    assert reason_of(ds) == Reason.UNSUPPORTED_TRANSFER_SYNTAX


def test_encapsulated_pixel_data_without_items_is_undecodable() -> None:
    ds = small_image()
    ds.file_meta.TransferSyntaxUID = uid.JPEG2000Lossless
    assert reason_of(ds) == Reason.UNDECODABLE


def test_corrupted_jpeg2000_stream_is_undecodable() -> None:
    ds = compressed(small_image(), uid.JPEG2000Lossless)
    data = bytearray(ds.PixelData)
    half, end = len(data) // 2, len(data) - 4
    # Keep the item framing, SIZ and the closing EOC; ruin the codestream in between.
    data[half:end] = b"\x00" * (end - half)
    ds.PixelData = bytes(data)
    assert reason_of(ds) == Reason.UNDECODABLE


def test_jpeg2000_stream_without_its_end_is_refused_before_decoding() -> None:
    ds = compressed(small_image(), uid.JPEG2000Lossless)
    data = bytearray(ds.PixelData)
    half = len(data) // 2
    data[half:] = b"\x00" * (len(data) - half)  # the second half, EOC with it, is gone
    ds.PixelData = bytes(data)
    assert reason_of(ds) == Reason.PIXEL_DATA_MISMATCH


def test_broken_canon_jpeg2000_is_refused_and_its_fixed_copy_decodes(shared_dir: Path) -> None:
    folder = shared_dir / "dicom/pylibjpeg-data/ljdata/ds/JPEG2000Lossless"
    broken = pydicom.dcmread(folder / "966.dcm")
    with pytest.raises(NotAnalysable) as info:
        display_grey(broken, max_size=256)
    assert info.value.reason == Reason.UNDECODABLE
    fixed = display_grey(pydicom.dcmread(folder / "966_fixed.dcm"), max_size=256)
    assert fixed.shape == (256, round(2000 * 256 / 2128))


@pytest.mark.parametrize(
    "path",
    [
        "robyoung-dicom-test-files/data/WG04/JPLY/RG3_JPLY",
        "robyoung-dicom-test-files/data/WG04/JPLY/XA1_JPLY",
        "pylibjpeg-data/ljdata/ds/JPEGExtended/RG2_JPLY.dcm",
    ],
)
def test_wg04_jply_files_really_do_not_decode(shared_dir: Path, path: str) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / path)
    with pytest.raises(RuntimeError, match="all available plugins"):
        _ = ds.pixel_array  # pydicom itself, every installed plugin
    assert reason_of(ds) == Reason.UNDECODABLE


def test_messages_carry_no_patient_data() -> None:
    ds = small_image(PatientName="Secret^Person", PatientID="ID-4711")
    ds.NumberOfFrames = 3
    with pytest.raises(NotAnalysable) as info:
        to_model_input(ds, 32)
    text = str(info.value) + repr(info.value)
    assert "Secret" not in text
    assert "4711" not in text


def test_not_analysable_is_a_value_error_and_pickles() -> None:
    error = NotAnalysable(Reason.MULTI_FRAME, "2 frames")
    assert isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.message) == ("multi_frame", "2 frames")


def test_inputs_are_not_modified() -> None:
    ds = small_image(WindowCenter=2000, WindowWidth=4000)
    before = copy.deepcopy(ds)
    to_model_input(ds, 32)
    display_grey(ds, max_size=16)
    assert ds == before
    assert ds.PixelData == before.PixelData


def test_colour_without_planar_configuration_is_refused() -> None:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    ds = make_image(pixels, photometric="RGB")
    del ds.PlanarConfiguration
    assert reason_of(ds) == Reason.DIMENSIONS
    ds.PlanarConfiguration = 2
    assert reason_of(ds) == Reason.DIMENSIONS


def encoded(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file (Explicit VR Little Endian unless its file meta says other)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_bytes_replaced(ds: Dataset, old: bytes, new: bytes) -> Dataset:
    """``ds`` written, the one occurrence of ``old`` replaced by ``new``, and read back."""
    data = encoded(ds)
    assert data.count(old) == 1
    return pydicom.dcmread(io.BytesIO(data.replace(old, new)))


#: Window Center (0028,1050) DS, LUT Explanation (0028,3003) LO and Pixel Data (7FE0,0010) OW,
#: explicit VR little endian.
WINDOW_CENTER_DS = b"\x28\x00\x50\x10DS"
LUT_EXPLANATION_LO = b"\x28\x00\x03\x30LO"
PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW"


def odd_length_bits_stored(ds: Dataset) -> Dataset:
    """Bits Stored (US) with a 3-byte value: no number of 2-byte values."""
    data = encoded(ds)
    start = data.index(b"\x28\x00\x01\x01US\x02\x00")
    value = data[start + 8 : start + 10]
    broken = data[:start] + b"\x28\x00\x01\x01US\x03\x00" + value + b"\x00" + data[start + 10 :]
    return pydicom.dcmread(io.BytesIO(broken))


def ambiguous_vr_without_pixel_representation() -> Dataset:
    """Implicit VR: Smallest Image Pixel Value is US or SS by Pixel Representation, absent."""
    ds = small_image(SmallestImagePixelValue=0, transfer_syntax=uid.ImplicitVRLittleEndian)
    del ds.PixelRepresentation
    return pydicom.dcmread(io.BytesIO(encoded(ds)))


def unknown_vr_in_a_voi_lut_item() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = list(range(4096))
    item["LUTData"].VR = "US"
    item.LUTExplanation = "identity"
    return with_bytes_replaced(
        small_image(VOILUTSequence=[item]), LUT_EXPLANATION_LO, b"\x28\x00\x03\x30U\x00"
    )


@pytest.mark.parametrize(
    "make",
    [
        # From inputs the fuzzer found (tests/fuzz), minimised, made with pydicom: each made
        # pydicom raise past every refusal (NotImplementedError, BytesLengthException,
        # AttributeError) where the pipeline first read the element.
        lambda: with_bytes_replaced(
            small_image(WindowCenter=2000, WindowWidth=4000),
            WINDOW_CENTER_DS,
            b"\x28\x00\x50\x10U\x00",
        ),
        lambda: with_bytes_replaced(small_image(), PIXEL_DATA_OW, b"\xe0\x7f\x10\x00O\x80"),
        lambda: odd_length_bits_stored(small_image()),
        ambiguous_vr_without_pixel_representation,
        unknown_vr_in_a_voi_lut_item,
    ],
    ids=[
        "unknown-vr",
        "unknown-vr-of-pixel-data",
        "odd-length-us",
        "ambiguous-vr",
        "unknown-vr-in-a-sequence",
    ],
)
def test_an_element_pydicom_cannot_read_is_refused_as_malformed(make: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the very values refused here
        with pytest.raises(NotAnalysable) as info:
            check_analysable(make())
        assert reason_of(make()) == Reason.MALFORMED_ELEMENT
    assert info.value.reason == Reason.MALFORMED_ELEMENT
    assert re.search(r"element \([0-9A-F]{4},[0-9A-F]{4}\) cannot be read", info.value.message)


def test_a_broken_private_element_is_left_alone() -> None:
    ds = small_image()
    block = ds.private_block(0x0029, "FRACTURE TEST", create=True)
    block.add_new(0x10, "US", 7)
    broken = with_bytes_replaced(
        ds, b"\x29\x00\x10\x10US\x02\x00\x07\x00", b"\x29\x00\x10\x10U\x00\x02\x00\x07\x00"
    )
    assert to_model_input(broken, 32).tensor.shape == (32, 32, 1)


#: Decodes a JPEG Baseline image whose first Huffman table segment is one byte too long, in a
#: process of its own: python-gdcm aborts the process on it (std::terminate), pydicom's first
#: choice of plugin; the pipeline must decode it with another plugin or refuse it.
CORRUPT_JPEG_CHILD = """
import io, sys
import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.encaps import encapsulate
from inference.errors import NotAnalysable
from inference.pixels import to_model_input
from tests.inference.dicom_factory import make_image

grey = np.random.default_rng(0).integers(0, 255, size=(8, 8), dtype=np.uint8)
buffer = io.BytesIO()
Image.fromarray(grey).save(buffer, format="JPEG", quality=90)
stream = buffer.getvalue()
second_table = stream.index(b"\\xff\\xc4", stream.index(b"\\xff\\xc4") + 2)
stream = stream[:second_table] + b"\\x6a" + stream[second_table:]
ds = make_image(grey, write=False)
ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
ds.PixelData = encapsulate([stream])
ds["PixelData"].VR = "OB"
try:
    print(to_model_input(ds, 32).tensor.shape)
except NotAnalysable as exc:
    print(exc.reason)
"""


def test_a_corrupt_jpeg_never_reaches_python_gdcm() -> None:
    """Found by the fuzzer: one byte too many in a Huffman table made the process abort."""
    assert "gdcm" not in DECODING_PLUGINS
    assert run_fresh(CORRUPT_JPEG_CHILD).strip() in {"(32, 32, 1)", Reason.UNDECODABLE}
