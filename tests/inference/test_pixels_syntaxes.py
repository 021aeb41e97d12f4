"""Every transfer syntax the node negotiates has a working decoder here, shown on real files;
pydicom-encoded copies of one image decode to the same model input; JPEG 2000 reduced decoding."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from openjpeg.utils import get_parameters
from pydicom import uid
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder

from inference.decode import (
    DECODABLE_TRANSFER_SYNTAXES,
    choose_reduction,
    decode_image,
    j2k_header,
)
from inference.pixels import display_grey, to_model_input
from tests.inference.dicom_factory import compressed, make_image

TF = "pydicom/src/pydicom/data/test_files"
PD = "pydicom-data/data_store/data"
LJ = "pylibjpeg-data/ljdata/ds"

#: One real file per syntax. HTJ2K Lossless RPCL has no sample: its lossless HTJ2K file is
#: relabelled (the codestream is valid for both; only the progression order is constrained).
SYNTAX_FILES: dict[str, str] = {
    uid.ImplicitVRLittleEndian: f"{TF}/MR_small_implicit.dcm",
    uid.ExplicitVRLittleEndian: f"{TF}/MR_small.dcm",
    uid.DeflatedExplicitVRLittleEndian: f"{TF}/image_dfl.dcm",
    uid.ExplicitVRBigEndian: f"{TF}/MR_small_bigendian.dcm",
    uid.JPEGBaseline8Bit: f"{LJ}/JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm",
    uid.JPEGExtended12Bit: f"{TF}/JPGExtended.dcm",
    uid.JPEGLossless: f"{LJ}/JPEGLossless/JPEGLossless_1s_1f_u_16_12.dcm",
    uid.JPEGLosslessSV1: f"{PD}/JPEG-LL.dcm",
    uid.JPEGLSLossless: f"{TF}/MR_small_jpeg_ls_lossless.dcm",
    uid.JPEGLSNearLossless: f"{TF}/JPEGLSNearLossless_16.dcm",
    uid.JPEG2000Lossless: f"{TF}/MR_small_jp2klossless.dcm",
    uid.JPEG2000: f"{TF}/693_J2KI.dcm",
    uid.HTJ2KLossless: f"{PD}/HTJ2KLossless_08_RGB.dcm",
    uid.HTJ2KLosslessRPCL: f"{PD}/HTJ2KLossless_08_RGB.dcm",
    uid.HTJ2K: f"{PD}/HTJ2K_08_RGB.dcm",
    uid.RLELossless: f"{TF}/MR_small_RLE.dcm",
}


def test_every_negotiated_syntax_has_a_sample_and_an_installed_decoder() -> None:
    assert set(SYNTAX_FILES) == set(DECODABLE_TRANSFER_SYNTAXES)
    assert len(set(DECODABLE_TRANSFER_SYNTAXES)) == len(DECODABLE_TRANSFER_SYNTAXES)
    for tsyntax in DECODABLE_TRANSFER_SYNTAXES:
        assert get_decoder(tsyntax).is_available, tsyntax


@pytest.mark.parametrize("tsyntax", DECODABLE_TRANSFER_SYNTAXES)
def test_a_real_file_of_each_syntax_decodes(shared_dir: Path, tsyntax: str) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / SYNTAX_FILES[tsyntax])
    if ds.file_meta.TransferSyntaxUID != tsyntax:
        assert tsyntax == uid.HTJ2KLosslessRPCL
        ds.file_meta.TransferSyntaxUID = uid.UID(tsyntax)
    decoded = decode_image(ds)
    assert decoded.pixels.shape[:2] == (ds.Rows, ds.Columns)
    prepared = to_model_input(ds, 64)
    assert prepared.tensor.shape == (64, 64, 1)
    assert float(prepared.tensor.max()) > float(prepared.tensor.min())


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
    ],
)
def test_lossless_copies_of_one_image_decode_identically(shared_dir: Path, name: str) -> None:
    reference = decode_image(pydicom.dcmread(shared_dir / "dicom" / TF / "MR_small.dcm"))
    decoded = decode_image(pydicom.dcmread(shared_dir / "dicom" / TF / name))
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)


def test_colour_copies_agree(shared_dir: Path) -> None:
    folder = shared_dir / "dicom" / TF
    rgb = display_grey(pydicom.dcmread(folder / "SC_rgb_small_odd.dcm"))
    big_endian = display_grey(pydicom.dcmread(folder / "SC_rgb_small_odd_big_endian.dcm"))
    ybr_jpeg = display_grey(pydicom.dcmread(folder / "SC_rgb_small_odd_jpeg.dcm"))
    np.testing.assert_array_equal(big_endian, rgb)
    assert float(np.abs(ybr_jpeg - rgb).max()) <= 0.05  # lossy JPEG of a 3 x 3 picture


def test_htj2k_lossy_is_close_to_lossless(shared_dir: Path) -> None:
    lossless = display_grey(pydicom.dcmread(shared_dir / "dicom" / PD / "HTJ2KLossless_08_RGB.dcm"))
    lossy = display_grey(pydicom.dcmread(shared_dir / "dicom" / PD / "HTJ2K_08_RGB.dcm"))
    assert float(np.abs(lossy - lossless).mean()) <= 0.01


def synthetic_12bit(height: int, width: int) -> np.ndarray:
    """A smooth 12-bit image with an edge and some noise, deterministic."""
    rng = np.random.default_rng(height * 7919 + width)
    yy, xx = np.mgrid[0:height, 0:width]
    image = 1500 + 1000 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + 800 * (xx > width // 3)
    image += rng.normal(0, 40, size=image.shape)
    clipped: np.ndarray = np.clip(image, 0, 4095).astype(np.uint16)
    return clipped


@pytest.mark.parametrize(
    "tsyntax",
    [uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.DeflatedExplicitVRLittleEndian],
)
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_encoded_copies_give_the_same_model_input(tsyntax: str, photometric: str) -> None:
    native = make_image(synthetic_12bit(199, 301), bits_stored=12, photometric=photometric)
    if tsyntax == uid.DeflatedExplicitVRLittleEndian:
        encoded = make_image(
            synthetic_12bit(199, 301),
            bits_stored=12,
            photometric=photometric,
            transfer_syntax=tsyntax,
        )
    else:
        encoded = compressed(native, tsyntax)
    assert encoded.file_meta.TransferSyntaxUID == tsyntax
    expected = to_model_input(native, 128, reduce=False)
    got = to_model_input(encoded, 128)
    np.testing.assert_array_equal(got.tensor, expected.tensor)


def test_big_endian_written_here_matches_little_endian() -> None:
    pixels = synthetic_12bit(40, 30)
    little = make_image(pixels, bits_stored=12)
    big = make_image(pixels, bits_stored=12, transfer_syntax=uid.ExplicitVRBigEndian)
    np.testing.assert_array_equal(display_grey(big), display_grey(little))


def test_reduced_jpeg2000_decode_of_a_generated_image() -> None:
    pixels = synthetic_12bit(900, 1100)
    ds = compressed(make_image(pixels, bits_stored=12), uid.JPEG2000Lossless)
    before = copy.deepcopy(ds)
    decoded = decode_image(ds, min_long_side=256)
    assert decoded.reduction == 2  # 1100 -> 275 px, the last level still >= 256
    assert decoded.pixels.shape == (225, 275)
    area = pixels.reshape(225, 4, 275, 4).mean(axis=(1, 3))
    # Same scale as the stored values (not Pillow's 16-bit widening, which would be x16); the
    # 5/3 wavelet's low-pass is not a box filter, so noise differs: measured 36.5 of 4096.
    assert float(np.abs(decoded.pixels.astype(float) - area).mean()) < 60
    full = decode_image(ds)
    np.testing.assert_array_equal(full.pixels, pixels)
    assert ds == before


@pytest.mark.parametrize(
    "path",
    [
        f"{TF}/MR_small_jp2klossless.dcm",
        f"{TF}/693_J2KI.dcm",
        f"{PD}/RG3_J2KR.dcm",
        f"{PD}/RG1_J2KI.dcm",
        f"{PD}/HTJ2K_08_RGB.dcm",
        f"{LJ}/JPEG2000Lossless/966_fixed.dcm",
    ],
)
def test_j2k_header_agrees_with_the_codec(shared_dir: Path, path: str) -> None:
    ds = pydicom.dcmread(shared_dir / "dicom" / path)
    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    header = j2k_header(stream)
    codec = get_parameters(stream)
    assert (header.width, header.height) == (codec["columns"], codec["rows"])
    assert header.components == codec["samples_per_pixel"]
    assert header.precision == codec["precision"]
    assert header.signed == codec["is_signed"]
    assert header.levels >= 1


def test_j2k_header_refuses_what_is_not_a_codestream() -> None:
    with pytest.raises(ValueError, match="codestream"):
        j2k_header(b"\x00" * 64)


@pytest.mark.parametrize(
    ("width", "height", "levels", "min_long_side", "expected"),
    [
        (1760, 1760, 5, 512, 1),  # 880 >= 512 > 440
        (1760, 1760, 5, 400, 2),  # 440 >= 400
        (1841, 1955, 5, 512, 1),
        (1841, 1955, 5, 400, 1),  # r=2 gives 461 x 489, which Pillow would allot as 460 wide
        (2000, 2128, 5, 256, 3),  # 250 x 266
        (4096, 4096, 2, 16, 2),  # no more than the codestream's decomposition levels
        (512, 512, 5, 512, 0),
        (100, 100, 5, 512, 0),
    ],
)
def test_choose_reduction_table(
    width: int, height: int, levels: int, min_long_side: int, expected: int
) -> None:
    assert choose_reduction(width, height, levels, min_long_side) == expected
