"""DICOM Pixel Data -> integer array: header checks first, then decoding, fast where it can be.

:func:`check_analysable` refuses a dataset from its header, and from what its Pixel Data says
about itself (:mod:`inference.streams`), before anything large is allocated.
:func:`decode_image` decodes the (single) frame with pydicom's pixel API and the installed
codecs (pylibjpeg plugins, pyjpegls, Pillow; not python-gdcm, see :data:`DECODING_PLUGINS`),
YBR colour coming back as RGB; for JPEG 2000 it can decode a reduced resolution level when the
caller needs fewer pixels. Compressed Pixel Data is decoded in child processes when the process
holds a decode pool (:mod:`inference.isolation`).
:func:`check_decoded` holds the decoded array to the header once more.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import BytesLengthException
from pydicom.pixels.decoders.base import get_decoder

from inference import isolation
from inference.errors import NotAnalysable, Reason
from inference.streams import (
    MISMATCH,
    DeclaredFrame,
    StreamMismatch,
    check_frame,
    codec_of,
    native_length,
)

#: Transfer syntaxes without compression of the Pixel Data (deflate compresses the whole
#: dataset, and pydicom inflates it when reading).
NATIVE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
)

#: The JPEG 2000 family (Part 1 and High-Throughput).
JPEG2000_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
)

#: Syntaxes decoded at a reduced resolution level when asked. High-Throughput JPEG 2000 would
#: allow it too, but no grey HTJ2K file is at hand to verify it, so it is decoded in full.
REDUCIBLE_TRANSFER_SYNTAXES: tuple[str, ...] = (uid.JPEG2000Lossless, uid.JPEG2000)

#: Every transfer syntax the pipeline decodes with the codecs this project installs. The DICOM
#: node negotiates exactly these; ``tests/inference/test_pixels_syntaxes.py`` decodes a file of
#: each one. JPEG Extended is listed for its 8-bit process; 12-bit streams are decoded by
#: pylibjpeg-libjpeg when they are well formed.
DECODABLE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    *NATIVE_TRANSFER_SYNTAXES,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    *JPEG2000_TRANSFER_SYNTAXES,
    uid.RLELossless,
)


class Photometric(StrEnum):
    """Photometric Interpretation values the pipeline accepts (PS3.3 C.7.6.3.1.2)."""

    MONOCHROME1 = "MONOCHROME1"
    MONOCHROME2 = "MONOCHROME2"
    RGB = "RGB"
    YBR_FULL = "YBR_FULL"
    YBR_FULL_422 = "YBR_FULL_422"
    YBR_ICT = "YBR_ICT"
    YBR_RCT = "YBR_RCT"


MONOCHROME = frozenset({Photometric.MONOCHROME1, Photometric.MONOCHROME2})
_PHOTOMETRIC_VALUES = frozenset(p.value for p in Photometric)

_ALLOWED_BITS_ALLOCATED = frozenset({8, 16, 32})
_MAX_DIMENSION = 65535  # Rows and Columns are US (PS3.3 C.7.6.3)
_ITEM_TAG_LE = b"\xfe\xff\x00\xe0"
#: pydicom's decoding plugins the pipeline uses, in the order they are tried. python-gdcm,
#: pydicom's first choice for every JPEG and JPEG 2000 syntax, is left out: on some corrupt JPEG
#: streams its wrapper lets a C++ exception escape and the process aborts (``std::terminate``),
#: which no ``except`` can catch (found by ``tests/fuzz``; docs/SECURITY.md). Every syntax of
#: :data:`DECODABLE_TRANSFER_SYNTAXES` has at least one of these (pylibjpeg for all).
DECODING_PLUGINS: tuple[str, ...] = ("pylibjpeg", "pyjpegls", "pydicom", "pillow")
_DECODE_ERRORS = (
    RuntimeError,
    ValueError,
    NotImplementedError,
    OSError,
    KeyError,
    IndexError,
    struct.error,
)


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """One decoded frame.

    ``pixels`` is ``rows x columns`` (grey) or ``rows x columns x 3`` (colour, RGB after any YBR
    conversion, as ``photometric`` says). When ``reduction`` is ``r > 0`` the frame was decoded
    at a lower resolution level: the array covers the whole image at ``1 / 2**r`` of its size.
    """

    pixels: NDArray[np.generic]
    photometric: str
    reduction: int = 0

    @property
    def factor(self) -> int:
        """How many original pixels one decoded pixel spans along each axis."""
        return int(2**self.reduction)


@dataclass(frozen=True, slots=True)
class J2KHeader:
    """What the main header of a JPEG 2000 codestream says (ISO/IEC 15444-1 A.5.1, A.6.1)."""

    width: int
    height: int
    x_offset: int
    y_offset: int
    components: int
    precision: int
    signed: bool
    levels: int


def transfer_syntax_of(ds: Dataset) -> uid.UID:
    """The dataset's Transfer Syntax UID (PS3.10 7.1), refusing a dataset without one."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = None if meta is None else meta.get("TransferSyntaxUID")
    if not tsyntax:
        raise NotAnalysable(
            Reason.UNSUPPORTED_TRANSFER_SYNTAX, "the dataset has no Transfer Syntax UID"
        )
    return uid.UID(str(tsyntax))


def _int_attribute(ds: Dataset, keyword: str, *, default: int | None = None) -> int:
    """An integer header attribute, refusing a missing or malformed one as ``dimensions``."""
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise NotAnalysable(Reason.DIMENSIONS, f"{keyword} is missing")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise NotAnalysable(Reason.DIMENSIONS, f"{keyword} is not an integer") from exc


#: Exceptions pydicom raises when it converts a raw element it cannot read: an unknown VR is
#: ``NotImplementedError`` (its ``hooks.raw_element_value``), a binary value whose length is not
#: a multiple of its VR's size ``BytesLengthException``, an ambiguous VR (US or SS) without the
#: Pixel Representation that decides it ``AttributeError``, a value the VR cannot hold one of
#: the others.
_ELEMENT_ERRORS = (
    NotImplementedError,
    BytesLengthException,
    AttributeError,
    ValueError,
    TypeError,
    KeyError,
    OverflowError,
)


def check_elements(ds: Dataset) -> None:
    """Refuse a data set with a standard element that cannot be read (sequences included).

    pydicom converts an element's raw bytes when the element is first used, so an element it
    cannot read would otherwise surface as an arbitrary exception wherever the pipeline first
    touches it. Converted here once, every later use reads the converted value (Pixel Data
    included: the checks that follow read it anyway). Private elements are left alone: the
    pipeline never reads them, and they are where vendors' files most often break the rules.

    Raises
    ------
    NotAnalysable
        ``malformed_element``, naming the tag (never its value).
    """
    for tag in list(ds.keys()):
        if tag.is_private:
            continue
        try:
            element = ds[tag]
        except _ELEMENT_ERRORS as exc:
            raise NotAnalysable(
                Reason.MALFORMED_ELEMENT, f"element {tag} cannot be read ({type(exc).__name__})"
            ) from exc
        if element.VR == "SQ":
            for item in element.value or ():
                check_elements(item)


def check_analysable(ds: Dataset, *, max_pixels: int = 100_000_000) -> None:
    """Refuse, before decoding, a dataset the pipeline cannot or should not decode.

    Nothing proportional to the image size is allocated: the checks read the Image Pixel module
    (PS3.3 C.7.6.3), then compare it with the Pixel Data that is present: its length for the
    native (uncompressed) transfer syntaxes (:func:`check_native_length`), the frame's own
    stream header and length for the encapsulated ones (:func:`check_encapsulated_frame`).

    Raises
    ------
    NotAnalysable
        ``malformed_element`` (:func:`check_elements`), ``no_pixel_data``,
        ``unsupported_transfer_syntax``, ``multi_frame``, ``dimensions``,
        ``unsupported_photometric``, ``truncated``, ``undecodable`` (an encapsulated Pixel
        Data that does not start with an item, PS3.5 A.4) or ``pixel_data_mismatch``.
    """
    check_elements(ds)
    if "PixelData" not in ds:
        raise NotAnalysable(Reason.NO_PIXEL_DATA, "the dataset has no Pixel Data (7FE0,0010)")
    tsyntax = transfer_syntax_of(ds)
    if tsyntax not in DECODABLE_TRANSFER_SYNTAXES:
        raise NotAnalysable(
            Reason.UNSUPPORTED_TRANSFER_SYNTAX, f"no decoder for transfer syntax {tsyntax}"
        )
    frames = _int_attribute(ds, "NumberOfFrames", default=1)
    if frames > 1:
        raise NotAnalysable(Reason.MULTI_FRAME, f"{frames} frames; only single images are read")
    if frames < 1:
        raise NotAnalysable(Reason.DIMENSIONS, f"Number of Frames is {frames}")
    # Type 1 in the Image Pixel module (PS3.3 C.7.6.3), and the decoders need every one.
    rows = _int_attribute(ds, "Rows")
    columns = _int_attribute(ds, "Columns")
    samples = _int_attribute(ds, "SamplesPerPixel")
    bits_allocated = _int_attribute(ds, "BitsAllocated")
    bits_stored = _int_attribute(ds, "BitsStored")
    representation = _int_attribute(ds, "PixelRepresentation")
    if not (1 <= rows <= _MAX_DIMENSION and 1 <= columns <= _MAX_DIMENSION):
        raise NotAnalysable(Reason.DIMENSIONS, f"image of {columns}x{rows} pixels")
    if rows * columns * samples > max_pixels:
        raise NotAnalysable(
            Reason.DIMENSIONS,
            f"image of {columns}x{rows}x{samples} samples exceeds the limit of {max_pixels}",
        )
    if samples not in (1, 3):
        raise NotAnalysable(Reason.DIMENSIONS, f"Samples per Pixel is {samples}")
    if samples == 3 and _int_attribute(ds, "PlanarConfiguration") not in (0, 1):
        raise NotAnalysable(Reason.DIMENSIONS, "Planar Configuration is neither 0 nor 1")
    if bits_allocated not in _ALLOWED_BITS_ALLOCATED:
        raise NotAnalysable(Reason.DIMENSIONS, f"Bits Allocated is {bits_allocated}")
    if not 1 <= bits_stored <= bits_allocated:
        raise NotAnalysable(
            Reason.DIMENSIONS, f"Bits Stored {bits_stored} with Bits Allocated {bits_allocated}"
        )
    if representation not in (0, 1):
        raise NotAnalysable(Reason.DIMENSIONS, f"Pixel Representation is {representation}")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _PHOTOMETRIC_VALUES:
        raise NotAnalysable(
            Reason.UNSUPPORTED_PHOTOMETRIC, f"Photometric Interpretation {photometric!r}"
        )
    if (photometric in MONOCHROME) != (samples == 1):
        raise NotAnalysable(
            Reason.UNSUPPORTED_PHOTOMETRIC,
            f"Photometric Interpretation {photometric} with {samples} samples per pixel",
        )
    data = ds.PixelData
    if not isinstance(data, bytes | bytearray):
        raise NotAnalysable(Reason.NO_PIXEL_DATA, "Pixel Data has no value")
    declared = DeclaredFrame(rows, columns, samples, bits_allocated)
    if tsyntax in NATIVE_TRANSFER_SYNTAXES:
        check_native_length(data, declared, photometric)
        return
    if bytes(data[:4]) != _ITEM_TAG_LE:
        raise NotAnalysable(
            Reason.UNDECODABLE, "encapsulated Pixel Data does not start with an item"
        )
    check_encapsulated_frame(ds, tsyntax, declared)


def _mismatch(detail: str) -> NotAnalysable:
    return NotAnalysable(Reason.PIXEL_DATA_MISMATCH, f"{MISMATCH}: {detail}")


def check_native_length(data: bytes | bytearray, declared: DeclaredFrame, photometric: str) -> None:
    """Refuse native Pixel Data whose length is not the header's frame size.

    PS3.5 8.1.1 and 8.2: Rows x Columns x Samples per Pixel x Bits Allocated / 8 bytes a frame
    (:func:`inference.streams.native_length`), plus one byte when that is odd (PS3.5 7.1.1:
    values have even length; real writers pad with any value). Fewer bytes are ``truncated``.
    More are tolerated only when every further byte is zero, as trailing padding some writers
    leave (pydicom's ``MR_small_padded``); any other excess means the header describes pixels
    other than those present (a wrong size, bit depth or number of frames), a
    ``pixel_data_mismatch``. The excess is inspected in place, without a copy.
    """
    expected = native_length(
        declared.rows, declared.columns, declared.samples, declared.bits_allocated, 1, photometric
    )
    if len(data) < expected:
        raise NotAnalysable(
            Reason.TRUNCATED,
            f"Pixel Data holds {len(data)} bytes, the header declares {expected}",
        )
    padded = expected + expected % 2  # the one byte that makes the value even, any value
    if len(data) > padded and np.frombuffer(data, dtype=np.uint8, offset=padded).any():
        raise _mismatch(
            f"Pixel Data holds {len(data)} bytes, {declared.describe()} samples of "
            f"{declared.bits_allocated} bits take {expected}, and the rest is not padding"
        )


def check_encapsulated_frame(ds: Dataset, tsyntax: str, declared: DeclaredFrame) -> None:
    """Refuse encapsulated Pixel Data whose one frame contradicts the header, before decoding.

    The Basic Offset Table (PS3.5 A.4) and any Extended Offset Table (PS3.3 C.7.6.3) must
    list at most the one frame the header declares; the frame's own stream header and length
    are then checked by :func:`inference.streams.check_frame`. Only the compressed bytes are
    read: nothing proportional to the declared image is allocated.

    Raises
    ------
    NotAnalysable
        ``pixel_data_mismatch``, its message naming the values that disagree.
    """
    codec = codec_of(tsyntax)
    if codec is None:
        return
    data = ds.PixelData
    (table_length,) = struct.unpack_from("<I", data, 4) if len(data) >= 8 else (0,)
    extended = ds.get("ExtendedOffsetTable")
    listed = max(table_length // 4, len(extended.value or b"") // 8 if extended else 0)
    if listed > 1:
        raise _mismatch(f"the offset table lists {listed} frames, the header declares 1")
    try:
        frame = _first_frame(ds)
    except (ValueError, StopIteration, struct.error) as exc:
        raise _mismatch("the encapsulated Pixel Data holds no complete frame") from exc
    try:
        check_frame(frame, codec, declared)
    except StreamMismatch as exc:
        raise _mismatch(str(exc)) from exc


def check_decoded(pixels: NDArray[np.generic], ds: Dataset, reduction: int = 0) -> None:
    """Refuse a decoded frame whose shape or sample type is not what the header declares.

    The last guard, whatever a decoder did: Rows x Columns (each ``ceil(n / 2**reduction)``
    for a reduced JPEG 2000 decode, ISO/IEC 15444-1 B.5), times Samples per Pixel when more
    than one, in an integer type no wider than Bits Allocated (PS3.5 8.1.1).

    Raises
    ------
    NotAnalysable
        ``pixel_data_mismatch``.
    """
    rows, columns = (-(-int(n) // (1 << reduction)) for n in (ds.Rows, ds.Columns))
    samples = int(ds.get("SamplesPerPixel", 1))
    shape = (rows, columns) if samples == 1 else (rows, columns, samples)
    if pixels.shape != shape:
        raise _mismatch(f"decoded shape {pixels.shape}, the header declares {shape}")
    bits_allocated = int(ds.BitsAllocated)
    if pixels.dtype.kind not in "ui" or pixels.dtype.itemsize * 8 > bits_allocated:
        raise _mismatch(
            f"decoded samples are {pixels.dtype}, the header allocates {bits_allocated} bits"
        )


def _markers(stream: bytes, start: int) -> Iterator[tuple[int, bytes]]:
    """Marker segments of a codestream's main header from ``start`` (after SOC) up to SOT."""
    pos = start
    while pos + 4 <= len(stream):
        marker, length = struct.unpack_from(">HH", stream, pos)
        if marker == 0xFF90 or marker & 0xFF00 != 0xFF00:  # SOT: the main header has ended
            return
        yield marker, stream[pos + 4 : pos + 2 + length]
        pos += 2 + length


def j2k_header(stream: bytes) -> J2KHeader:
    """Parse the SIZ, COD and COC segments of a JPEG 2000 codestream's main header.

    A JP2 file wrapper, which some writers leave around the codestream, is skipped.

    Raises
    ------
    ValueError
        If there is no SOC + SIZ start or the segments are too short.
    """
    start = stream.find(b"\xff\x4f\xff\x51")
    if start < 0:
        raise ValueError("no JPEG 2000 codestream (SOC followed by SIZ) found")
    width = height = x_off = y_off = components = precision = 0
    signed = False
    levels: list[int] = []
    for marker, body in _markers(stream, start + 2):
        if marker == 0xFF51:  # SIZ, A.5.1
            _, xsiz, ysiz, xosiz, yosiz, _, _, _, _, components = struct.unpack_from(
                ">HIIIIIIIIH", body
            )
            ssiz = body[36]
            width, height, x_off, y_off = xsiz - xosiz, ysiz - yosiz, xosiz, yosiz
            precision, signed = (ssiz & 0x7F) + 1, bool(ssiz & 0x80)
        elif marker == 0xFF52:  # COD, A.6.1: Scod, SGcod (4 bytes), then decomposition levels
            levels.append(body[5])
        elif marker == 0xFF53:  # COC, A.6.2: Ccoc (1 or 2 bytes), Scoc, then levels
            levels.append(body[2 if components < 257 else 3])
    if not components or not levels:
        raise ValueError("the codestream's main header has no SIZ or COD segment")
    return J2KHeader(width, height, x_off, y_off, components, precision, signed, min(levels))


def _reduced_length(length: int, reduction: int) -> int:
    """Length of an axis at resolution level ``reduction`` (ISO/IEC 15444-1 B.5)."""
    return -(-length // (1 << reduction))


def _pillow_reduced_length(length: int, reduction: int) -> int:
    """The length Pillow allots for a reduced decode; it must equal the codec's to succeed."""
    power = 1 << reduction
    return int((length + (power >> 1)) / power)


def choose_reduction(width: int, height: int, levels: int, min_long_side: int) -> int:
    """The largest resolution reduction keeping at least ``min_long_side`` px on the long side.

    ``r`` halves the image ``r`` times; it cannot exceed the codestream's decomposition levels,
    and it is only chosen where the reduced size that Pillow allots matches the codec's
    (``ceil(n / 2**r)``); otherwise a smaller ``r`` is used.
    """
    for reduction in range(max(0, levels), 0, -1):
        if _reduced_length(max(width, height), reduction) < min_long_side:
            continue
        if all(
            _pillow_reduced_length(n, reduction) == _reduced_length(n, reduction)
            for n in (width, height)
        ):
            return reduction
    return 0


def _first_frame(ds: Dataset) -> bytes:
    """The encapsulated codestream of the first (only) frame, fragments joined (PS3.5 A.4)."""
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _decode_j2k_reduced(ds: Dataset, min_long_side: int) -> DecodedImage | None:
    """Decode a grey JPEG 2000 frame at a reduced resolution level, or say it cannot.

    Returns ``None`` when no reduction applies or the stream is not the plain case handled here
    (one component, precision and signedness as the header declares, no image offset, a
    plausible number of decomposition levels); the caller then decodes at full resolution,
    which also reports any genuine decoding error.
    """
    try:
        stream = _first_frame(ds)
        header = j2k_header(stream)
    except (ValueError, StopIteration, struct.error, IndexError):
        return None
    plain = (
        header.components == 1
        and header.precision == int(ds.BitsStored)
        and header.precision <= 16
        and header.signed == bool(ds.PixelRepresentation)
        and (header.width, header.height) == (int(ds.Columns), int(ds.Rows))
        and header.x_offset == header.y_offset == 0
        # More decomposition levels than the image has pixels for is legal but unusual; such
        # streams (one in the shared test data) fail in Pillow's codec, so do not try.
        and (1 << header.levels) <= max(header.width, header.height)
    )
    if not plain:
        return None
    reduction = choose_reduction(header.width, header.height, header.levels, min_long_side)
    if reduction == 0:
        return None
    try:
        with Image.open(io.BytesIO(stream), formats=("JPEG2000",)) as image:
            # Pillow's documented open-time option for JPEG 2000 (resolution levels to discard).
            image.reduce = reduction  # type: ignore[method-assign, assignment]
            image.load()
            raw = np.asarray(image)
    except (OSError, ValueError, SyntaxError):
        return None
    expected = (_reduced_length(header.height, reduction), _reduced_length(header.width, reduction))
    if raw.shape != expected:
        return None
    # Pillow widens N-bit samples to 8 or 16 bits and offsets signed ones to unsigned
    # (its Jpeg2KDecode.c); undo both to get the stored values back.
    container_bits = 8 if header.precision <= 8 else 16
    values = raw.astype(np.int32) >> (container_bits - header.precision)
    if header.signed:
        values -= 1 << (header.precision - 1)
        pixels: NDArray[np.generic] = values.astype(np.int16 if container_bits == 16 else np.int8)
    else:
        pixels = values.astype(np.uint16 if container_bits == 16 else np.uint8)
    photometric = str(ds.PhotometricInterpretation)
    return DecodedImage(pixels=pixels, photometric=photometric, reduction=reduction)


def _decode_full(ds: Dataset, tsyntax: uid.UID) -> tuple[NDArray[np.generic], dict[str, Any]]:
    """The frame at full resolution, with pydicom's overrides of the header (YBR -> RGB).

    An encapsulated frame is offered to each of :data:`DECODING_PLUGINS` that is installed, in
    turn, until one decodes it, as pydicom itself would, but without python-gdcm.

    Raises
    ------
    NotAnalysable
        ``undecodable`` when every plugin fails.
    """
    decoder = get_decoder(tsyntax)
    plugins = (
        [""]  # native: pydicom's own reader, no plugin to choose
        if decoder.is_native
        else [plugin for plugin in DECODING_PLUGINS if plugin in decoder.available_plugins]
    )
    for plugin in plugins:
        try:
            with warnings.catch_warnings():
                # Codec chatter (a J2K sign mismatch pydicom corrects) is not the caller's concern.
                warnings.simplefilter("ignore")
                return decoder.as_array(ds, index=0, decoding_plugin=plugin)
        except _DECODE_ERRORS:
            continue
    raise NotAnalysable(
        Reason.UNDECODABLE, f"no installed decoder could decode the {tsyntax.name} stream"
    )


def decode_frame(ds: Dataset, min_long_side: int | None) -> DecodedImage:
    """Decode the frame of ``ds``, a dataset :func:`check_analysable` accepted.

    For compressed Pixel Data, what runs in a decoding child process when the service isolates
    decoding (:mod:`inference.isolation`); :func:`check_decoded` is left to the caller.

    Raises
    ------
    NotAnalysable
        ``undecodable`` when every installed decoder fails.
    """
    tsyntax = transfer_syntax_of(ds)
    if (
        min_long_side is not None
        and tsyntax in REDUCIBLE_TRANSFER_SYNTAXES
        and int(ds.get("SamplesPerPixel", 1)) == 1
    ):
        reduced = _decode_j2k_reduced(ds, min_long_side)
        if reduced is not None:
            return reduced
    pixels, overrides = _decode_full(ds, tsyntax)
    photometric = str(overrides.get("photometric_interpretation", ds.PhotometricInterpretation))
    return DecodedImage(pixels=pixels, photometric=photometric)


def decode_image(ds: Dataset, *, min_long_side: int | None = None) -> DecodedImage:
    """Check and decode the single frame of ``ds``; the dataset is not modified.

    Native Pixel Data is read in this process. Compressed Pixel Data goes to the codecs in a
    child process when the process holds a decode pool (:func:`inference.isolation.acquire`,
    the service does at start-up), here otherwise.

    Parameters
    ----------
    ds:
        A dataset with File Meta (for its Transfer Syntax UID).
    min_long_side:
        When given, a grey JPEG 2000 (Part 1) frame is decoded at the smallest resolution
        level that still has at least this many pixels on its long side (much faster for
        large images). Other syntaxes are always decoded at full resolution.

    Raises
    ------
    NotAnalysable
        From :func:`check_analysable`, or ``undecodable`` when every installed decoder fails
        or the decoding process dies, or ``decode_timeout`` when the decoding process runs past
        its time limit and is killed.
    """
    check_analysable(ds)
    tsyntax = transfer_syntax_of(ds)
    pool = isolation.shared_pool()
    if pool is not None and tsyntax not in NATIVE_TRANSFER_SYNTAXES:
        decoded = pool.decode(isolation.pixel_module(ds), min_long_side)
    else:
        decoded = decode_frame(ds, min_long_side)
    check_decoded(decoded.pixels, ds, decoded.reduction)
    return decoded
