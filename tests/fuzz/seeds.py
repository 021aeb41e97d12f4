"""The fuzzer's seed corpus: small real files from the shared material and pydicom-made images.

Nothing here is copied into the repository: the seeds are written at run time into a folder
the fuzzer reads. Each seed is a DICOM Part 10 file whose file meta names the transfer syntax
it would arrive in (see :mod:`tests.fuzz.received`).

Real files are *relabelled* as the node's own input: SOP Class UID Digital X-Ray Image Storage -
For Presentation, Modality DX and Body Part Examined HAND, so that they pass the SOP class and
scope checks and reach the decoder; their pixel data and every other attribute stay as in the
file. Where a stream is valid under another negotiated transfer syntax too, a copy under that
one is added (a JPEG Lossless SV1 stream is a JPEG Lossless one; a JPEG 2000 Part 1 codestream
is decoded by the same library under the High-Throughput syntaxes). Syntaxes without a small
real file get a pydicom-made image of a synthetic radiograph (pydicom's encoders, Pillow for
JPEG Baseline).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import config, dcmread, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

#: Files under ``<shared>/dicom`` used as seeds: each under 256 KiB, together every codec.
REAL_SEEDS: tuple[str, ...] = (
    "pydicom/src/pydicom/data/test_files/dicomdirtests/77654033/CR1/6154",  # CR, 12 bits
    "highdicom/data/test_files/dx_image.dcm",  # DX MONOCHROME1, Presentation LUT INVERSE
    "pydicom/src/pydicom/data/test_files/MR_small_implicit.dcm",
    "pydicom/src/pydicom/data/test_files/MR_small_bigendian.dcm",
    "pydicom/src/pydicom/data/test_files/MR_small_padded.dcm",
    "pydicom/src/pydicom/data/test_files/image_dfl.dcm",  # deflated
    "pydicom/src/pydicom/data/test_files/SC_ybr_full_422_uncompressed.dcm",
    "pydicom/src/pydicom/data/test_files/MR_small_RLE.dcm",
    "pydicom/src/pydicom/data/test_files/SC_rgb_rle.dcm",
    "pydicom/src/pydicom/data/test_files/MR_small_jpeg_ls_lossless.dcm",
    "pydicom/src/pydicom/data/test_files/JPEGLSNearLossless_16.dcm",
    "pydicom/src/pydicom/data/test_files/MR_small_jp2klossless.dcm",
    "pydicom/src/pydicom/data/test_files/693_J2KI.dcm",
    "pydicom/src/pydicom/data/test_files/JPGExtended.dcm",  # JPEG Extended, 12 bits
    "pydicom/src/pydicom/data/test_files/SC_rgb_small_odd_jpeg.dcm",  # YBR_FULL baseline
    "pylibjpeg-data/ljdata/ds/JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm",
    "pydicom-data/data_store/data/JPEG-LL.dcm",  # JPEG Lossless SV1, 16 bits
    "pydicom-data/data_store/data/HTJ2K_08_RGB.dcm",  # the one small HTJ2K file
)

#: Further syntaxes a real file's stream is also valid under (see the module docstring).
ALSO_VALID_UNDER: dict[str, tuple[str, ...]] = {
    uid.JPEGLosslessSV1: (uid.JPEGLossless,),
    uid.JPEG2000Lossless: (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL),
}

#: The fuzzer never makes an input longer than this (libFuzzer ``-max_len``); every seed fits.
MAX_SEED_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Seed:
    """One seed file: its name in the corpus and its bytes."""

    name: str
    data: bytes


def part10(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` as a Part 10 file in ``transfer_syntax`` (pixel data written as they are).

    Values are written as they are too: real files carry some that pydicom's writing
    validation would refuse (the test suite sets it to raise), and seeds keep them.
    """
    ds.file_meta.TransferSyntaxUID = uid.UID(transfer_syntax)
    buffer = io.BytesIO()
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buffer, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = previous
    return buffer.getvalue()


def relabel(ds: Dataset) -> Dataset:
    """Make ``ds`` a hand radiograph for the node's SOP class and scope checks, in place.

    Study, Series and SOP Instance UIDs that a codec test file lacks are made up.
    """
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if keyword not in ds:
            setattr(ds, keyword, uid.generate_uid(entropy_srcs=["fuzz-seed", keyword]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "DX"
    ds.BodyPartExamined = "HAND"
    return ds


def real_seeds(shared: Path) -> list[Seed]:
    """The relabelled real files, each under its own syntax and the ones it is also valid in."""
    seeds = []
    for relative in REAL_SEEDS:
        path = shared / "dicom" / relative
        ds = relabel(dcmread(path))
        original = str(ds.file_meta.TransferSyntaxUID)
        for tsyntax in (original, *ALSO_VALID_UNDER.get(original, ())):
            name = f"real-{path.name.removesuffix('.dcm')}-{tsyntax}.dcm"
            seeds.append(Seed(name, part10(ds, tsyntax)))
    return seeds


def synthetic_radiograph(rows: int = 80, columns: int = 96) -> np.ndarray:
    """A 12-bit grey image with a bright bone-like bar on soft tissue: no patient, any size."""
    y, x = np.mgrid[0:rows, 0:columns]
    tissue = 900 + 300 * np.exp(-(((x - columns / 2) / (columns / 3)) ** 2))
    bone = np.where(np.abs((x - columns / 2) + 0.3 * (y - rows / 2)) < columns / 10, 1800, 0)
    noise = np.random.default_rng(0).integers(0, 40, size=(rows, columns))
    return np.clip(tissue + bone + noise, 0, 4095).astype(np.uint16)


def _synthetic_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2") -> Dataset:
    """A DX For Presentation dataset of ``pixels`` (grey, unsigned), synthetic identifiers."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = uid.generate_uid(entropy_srcs=["fuzz-seed", photometric, str(pixels.dtype)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid(entropy_srcs=["fuzz-seed-study"])
    ds.SeriesInstanceUID = uid.generate_uid(entropy_srcs=["fuzz-seed-series"])
    ds.Modality = "DX"
    ds.BodyPartExamined = "HAND"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 12 if pixels.dtype == np.uint16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if pixels.dtype == np.uint16 else "OB"
    return ds


def _with_luts(ds: Dataset) -> Dataset:
    """``ds`` with a Modality LUT, a VOI LUT and pixel padding: the grey chain's other branches."""
    modality = Dataset()
    modality.LUTDescriptor = [4096, 0, 16]
    modality.ModalityLUTType = "US"
    modality.LUTData = (np.arange(4096, dtype="<u2") * 16).tobytes()
    modality["LUTData"].VR = "OW"  # the LUT Data of one item as OW bytes, of the other as US
    ds.ModalityLUTSequence = [modality]
    voi = Dataset()
    voi.LUTDescriptor = [256, 0, 8]
    voi.LUTData = list(range(256))
    voi["LUTData"].VR = "US"
    ds.VOILUTSequence = [voi]
    ds.PixelPaddingValue = 0
    return ds


def synthetic_seeds() -> list[Seed]:
    """pydicom-made images: every native syntax, RLE, JPEG-LS, JPEG 2000, JPEG Baseline."""
    grey12 = synthetic_radiograph()
    seeds = []
    for tsyntax in (
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
        uid.DeflatedExplicitVRLittleEndian,
    ):
        ds = _synthetic_dataset(grey12)
        ds.WindowCenter, ds.WindowWidth = 1500, 2000
        if tsyntax == uid.ExplicitVRBigEndian:
            ds.PixelData = grey12.astype(">u2").tobytes()
        seeds.append(Seed(f"made-window-{tsyntax}.dcm", part10(ds, tsyntax)))
    luts = _with_luts(_synthetic_dataset(grey12))
    seeds.append(Seed("made-luts.dcm", part10(luts, uid.ExplicitVRLittleEndian)))
    for tsyntax, options in (
        (uid.RLELossless, {}),
        (uid.JPEGLSLossless, {}),
        (uid.JPEGLSNearLossless, {"jls_error": 2}),
        (uid.JPEG2000Lossless, {}),
        (uid.JPEG2000, {"j2k_cr": [20]}),
    ):
        ds = _synthetic_dataset(grey12, photometric="MONOCHROME1")
        ds.compress(tsyntax, **options)
        seeds.append(Seed(f"made-{tsyntax}.dcm", part10(ds, tsyntax)))
    grey8 = (synthetic_radiograph() >> 4).astype(np.uint8)
    ds = _synthetic_dataset(grey8)
    buffer = io.BytesIO()
    Image.fromarray(grey8).save(buffer, format="JPEG", quality=90)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    seeds.append(Seed(f"made-{uid.JPEGBaseline8Bit}.dcm", part10(ds, uid.JPEGBaseline8Bit)))
    return seeds


def write_seeds(shared: Path, folder: Path) -> list[Path]:
    """Write every seed into ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in (*real_seeds(shared), *synthetic_seeds()):
        if len(seed.data) > MAX_SEED_BYTES:
            raise ValueError(f"seed {seed.name} has {len(seed.data)} bytes, over {MAX_SEED_BYTES}")
        path = folder / seed.name
        path.write_bytes(seed.data)
        paths.append(path)
    return paths
