"""What the Pixel Data says about itself, checked against the Image Pixel module before decoding.

A decoder trusts the compressed stream, the rest of the pipeline trusts the header. When the two
disagree (a JPEG whose SOF says 20000 x 20000 under a header of 64 x 64, a stream of 354 bytes
for 10000 x 10000 pixels) the decoder either allocates for a size nobody checked or fills a
mostly blank image that the model would then read as a radiograph. So each frame's own header
is parsed here (JPEG and JPEG-LS SOF, JPEG 2000 SIZ, the RLE header), compared with Rows,
Columns, Samples per Pixel and Bits Allocated, and its length with the least a stream of that
size can occupy. The JPEG and JPEG 2000 checks read a few dozen bytes, the RLE ones the run
headers of each segment; none allocates anything proportional to the image.

Every function is pure: bytes (and header values) in, a small dataclass or an exception out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from pydicom import uid

#: The message every refusal of this module starts with.
MISMATCH = "pixel data does not match the header"

_SOI, _SOF55 = 0xFFD8, 0xFFF7
#: Start-of-frame markers of ITU-T T.81 B.1.1.3 (SOF0-3, 5-7, 9-11, 13-15) and T.87 SOF55.
_SOF_MARKERS = frozenset({*range(0xFFC0, 0xFFC4), *range(0xFFC5, 0xFFC8)}) | frozenset(
    {*range(0xFFC9, 0xFFCC), *range(0xFFCD, 0xFFD0), _SOF55}
)
#: Markers without a length field (T.81 B.1.1.3): TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0xFF01, *range(0xFFD0, 0xFFDA)})
_SOC_SIZ = b"\xff\x4f\xff\x51"
#: EOI (T.81 B.2.1) and EOC (ISO/IEC 15444-1 A.4.4) share one code.
_END = b"\xff\xd9"
#: Bytes seen after the end marker as fragment padding.
_PADDING = b"\x00\xff "
#: The JPEG 2000 signature box (ISO/IEC 15444-1 I.5.1) that starts a JP2 file.
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_JP2_CODESTREAM_BOX = b"jp2c"
_RLE_HEADER_LENGTH = 64
_RLE_MAX_SEGMENTS = 15
#: PackBits replicate runs (PS3.5 G.3.1) code at most 128 bytes in 2, a 64:1 ratio.
_RLE_BYTES_PER_RUN, _RLE_RUN_LENGTH = 128, 2


class StreamMismatch(ValueError):  # noqa: N818 - reads as what was found
    """The stream contradicts the header, is cut short or is not the codec's stream at all.

    The message names sizes and markers only, never patient data.
    """


class Process(StrEnum):
    """How a JPEG or JPEG-LS frame is coded, from its SOF marker (T.81 B.1.1.3, T.87 C.2.2)."""

    SEQUENTIAL = "sequential DCT"  # SOF0, SOF1 (Huffman), SOF9 (arithmetic)
    PROGRESSIVE = "progressive DCT"  # SOF2, SOF10
    LOSSLESS = "lossless"  # SOF3, SOF11
    HIERARCHICAL = "hierarchical"  # SOF5-7, SOF13-15
    JPEG_LS = "JPEG-LS"  # SOF55


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The image a compressed frame declares: its size, samples and bits per sample.

    ``rows`` is 0 for a JPEG frame whose SOF leaves the number of lines to a DNL segment that
    the stream does not have.
    """

    columns: int
    rows: int
    components: int
    precision: int


@dataclass(frozen=True, slots=True)
class JpegFrame:
    """A JPEG or JPEG-LS frame: its header, coding process, sampling and whether it ends.

    ``max_horizontal`` and ``max_vertical`` are the largest sampling factors (T.81 A.1.1);
    ``complete`` says the stream ends with EOI (B.2.1), trailing padding aside.
    """

    header: FrameHeader
    process: Process
    arithmetic: bool
    max_horizontal: int
    max_vertical: int
    complete: bool


def _process_of(marker: int) -> tuple[Process, bool]:
    """The coding process and whether it is arithmetic-coded, from a SOF marker."""
    if marker == _SOF55:
        return Process.JPEG_LS, False
    arithmetic = marker >= 0xFFC9
    kind = (marker - 0xFFC0) & 0x3  # 0, 1: sequential, 2: progressive, 3: lossless
    if marker in (0xFFC5, 0xFFC6, 0xFFC7, 0xFFCD, 0xFFCE, 0xFFCF):
        return Process.HIERARCHICAL, arithmetic
    if kind == 2:
        return Process.PROGRESSIVE, arithmetic
    if kind == 3:
        return Process.LOSSLESS, arithmetic
    return Process.SEQUENTIAL, arithmetic


def _without_padding(stream: bytes) -> bytes:
    """The stream without trailing padding after its end marker.

    PS3.5 A.4 pads a fragment of odd length with one byte; the shared test files use 0x00, 0xFF
    (a JPEG fill byte, T.81 B.1.1.2) and a space. Neither byte can end an EOI or EOC marker.
    """
    return stream.rstrip(_PADDING)


def jpeg_frame(stream: bytes) -> JpegFrame:
    """Parse the frame header of a JPEG (ITU-T T.81) or JPEG-LS (ITU-T T.87) stream.

    The marker segments from SOI are walked up to the first SOF (T.81 B.2.2 for the frame
    header: P, Y, X, Nf and per component its sampling factors; T.87 C.2.2 gives SOF55 the
    same layout). A number of lines of 0 is taken from the DNL segment (B.2.5) if there is one.

    Raises
    ------
    StreamMismatch
        If the stream does not start with SOI, a segment runs past the end or no SOF is found.
    """
    if len(stream) < 4 or struct.unpack_from(">H", stream)[0] != _SOI:
        raise StreamMismatch("the JPEG stream does not start with SOI")
    pos = 2
    while True:
        while pos < len(stream) and stream[pos] == 0xFF and stream[pos + 1 : pos + 2] == b"\xff":
            pos += 1  # fill bytes before a marker (B.1.1.2)
        if pos + 4 > len(stream):
            raise StreamMismatch("the JPEG stream ends before its frame header")
        marker, length = struct.unpack_from(">HH", stream, pos)
        if marker & 0xFF00 != 0xFF00 or marker in _STANDALONE:
            raise StreamMismatch(f"unexpected 0x{marker:04X} before the JPEG frame header")
        if marker in _SOF_MARKERS:
            break
        pos += 2 + length
    body = stream[pos + 4 : pos + 2 + length]
    if length < 8 or len(body) < 6:
        raise StreamMismatch("the JPEG frame header is cut short")
    precision, rows, columns, components = struct.unpack_from(">BHHB", body)
    sampling = body[6 : 6 + 3 * components : 3] if marker != _SOF55 else b"\x11" * components
    if components == 0 or len(sampling) != components:
        raise StreamMismatch(f"the JPEG frame header lists {components} components")
    process, arithmetic = _process_of(marker)
    if rows == 0:
        rows = _dnl_lines(stream, pos + 2 + length)
    return JpegFrame(
        header=FrameHeader(columns, rows, components, precision),
        process=process,
        arithmetic=arithmetic,
        max_horizontal=max(max(s >> 4 for s in sampling), 1),
        max_vertical=max(max(s & 0xF for s in sampling), 1),
        complete=_without_padding(stream).endswith(_END),
    )


def _dnl_lines(stream: bytes, start: int) -> int:
    """The number of lines of a DNL segment (T.81 B.2.5) after ``start``, else 0."""
    pos = stream.find(b"\xff\xdc\x00\x04", start)
    if pos < 0 or pos + 6 > len(stream):
        return 0
    return int(struct.unpack_from(">H", stream, pos + 4)[0])


def j2k_codestream(stream: bytes) -> bytes:
    """The JPEG 2000 codestream itself: ``stream``, or the content of a JP2 wrapper's ``jp2c`` box.

    DICOM asks for the bare codestream (PS3.5 8.2.4), but some writers keep the JP2 file format
    around it (ISO/IEC 15444-1 Annex I); its boxes are walked to the Contiguous Codestream box.

    Raises
    ------
    StreamMismatch
        If neither a codestream (SOC then SIZ, A.4.1) nor a JP2 file holding one is found.
    """
    if stream.startswith(_SOC_SIZ):
        return stream
    if not stream.startswith(_JP2_SIGNATURE):
        raise StreamMismatch("the JPEG 2000 stream starts with neither SOC + SIZ nor a JP2 box")
    pos = 0
    while pos + 8 <= len(stream):
        length, kind = struct.unpack_from(">I4s", stream, pos)
        header = 8
        if length == 1 and pos + 16 <= len(stream):  # XLBox, I.4
            length, header = struct.unpack_from(">Q", stream, pos + 8)[0], 16
        elif length == 0:  # the last box, up to the end
            length = len(stream) - pos
        if kind == _JP2_CODESTREAM_BOX:
            codestream = stream[pos + header : pos + length]
            if not codestream.startswith(_SOC_SIZ):
                break
            return codestream
        if length < header:
            break
        pos += length
    raise StreamMismatch("the JP2 wrapper holds no JPEG 2000 codestream")


def j2k_size(stream: bytes) -> tuple[FrameHeader, bool]:
    """The image size of a JPEG 2000 / HTJ2K codestream's SIZ segment, and whether it ends.

    ISO/IEC 15444-1 A.5.1: the image is ``Xsiz - XOsiz`` by ``Ysiz - YOsiz`` with ``Csiz``
    components; the precision is that of the first component (``Ssiz`` bits 0-6, plus one). The
    codestream must end with EOC (A.4.4); the second value says whether it does.

    Raises
    ------
    StreamMismatch
        If there is no codestream or its SIZ segment is cut short.
    """
    codestream = j2k_codestream(stream)
    if len(codestream) < 4 + 2 + 38 + 3:
        raise StreamMismatch("the JPEG 2000 SIZ segment is cut short")
    length, _, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HHIIII", codestream, 4)
    (components,) = struct.unpack_from(">H", codestream, 4 + 36)
    if components == 0 or length != 38 + 3 * components or len(codestream) < 4 + length:
        raise StreamMismatch(f"the JPEG 2000 SIZ segment is malformed ({components} components)")
    if xsiz <= xosiz or ysiz <= yosiz:
        raise StreamMismatch("the JPEG 2000 SIZ segment declares an empty image")
    precision = (codestream[4 + 38] & 0x7F) + 1
    header = FrameHeader(xsiz - xosiz, ysiz - yosiz, components, precision)
    return header, _without_padding(codestream).endswith(_END)


def rle_offsets(frame: bytes) -> tuple[int, ...]:
    """The segment offsets of an RLE frame's 64-byte header (PS3.5 G.5).

    The header is the number of segments (1 to 15) and 15 offsets, unsigned 32-bit little
    endian; the first segment starts right after the header and each following one after it.

    Raises
    ------
    StreamMismatch
        If the header is cut short, the count is outside 1-15 or the offsets do not increase
        from 64 inside the frame.
    """
    if len(frame) < _RLE_HEADER_LENGTH:
        raise StreamMismatch(f"the RLE frame of {len(frame)} bytes has no complete header")
    count, *offsets = struct.unpack_from("<16I", frame)
    if not 1 <= count <= _RLE_MAX_SEGMENTS:
        raise StreamMismatch(f"the RLE header declares {count} segments")
    used = tuple(offsets[:count])
    if used[0] != _RLE_HEADER_LENGTH:
        raise StreamMismatch(f"the first RLE segment starts at {used[0]}, not 64")
    ends = (*used[1:], len(frame))
    if any(end <= start for start, end in zip(used, ends, strict=True)):
        raise StreamMismatch("the RLE segment offsets do not increase inside the frame")
    return used


def rle_decoded_length(segment: bytes) -> int:
    """How many bytes an RLE segment decodes to, read from its run headers without decoding.

    PS3.5 G.3.1 (PackBits): a header byte ``n`` of 0-127 is followed by ``n + 1`` literal
    bytes, -1 to -127 by one byte repeated ``1 - n`` times, -128 is a no-op. A literal run cut
    short by the end of the segment counts only the bytes present: a trailing header byte is
    how writers pad a segment to even length. Linear in the segment, nothing allocated.
    """
    decoded = pos = 0
    end = len(segment)
    while pos < end:
        header = segment[pos]
        if header < 128:
            decoded += min(header + 1, end - pos - 1)
            pos += header + 2
        elif header > 128:
            decoded += 257 - header
            pos += 2
        else:
            pos += 1
    return decoded


def minimum_jpeg_length(frame: JpegFrame) -> int:
    """The fewest bytes the entropy-coded data of ``frame`` can take, from its coding process.

    Huffman codes are at least one bit long (T.81 C). A sequential DCT scan codes every 8 x 8
    block with at least a DC code and an EOB (F.1.2): two bits a block. A progressive stream's
    first DC scan codes every block with at least one bit (G.1.2.1). Lossless coding has no
    runs: at least one bit a sample (H.1.2). Only the blocks or samples of one MCU grid are
    counted, a lower bound whatever the sampling. JPEG-LS (T.87 A.7) codes each line of each
    component with at least one bit, even in run mode. Arithmetic and hierarchical coding (no
    DICOM transfer syntax uses them) get no bound.
    """
    columns, rows = frame.header.columns, frame.header.rows
    blocks = -(-columns // (8 * frame.max_horizontal)) * -(-rows // (8 * frame.max_vertical))
    if frame.arithmetic or frame.process is Process.HIERARCHICAL:
        return 0
    if frame.process is Process.SEQUENTIAL:
        bits = 2 * blocks
    elif frame.process is Process.PROGRESSIVE:
        bits = blocks
    elif frame.process is Process.LOSSLESS:
        bits = -(-columns // frame.max_horizontal) * -(-rows // frame.max_vertical)
    else:
        bits = rows
    return -(-bits // 8)


def minimum_rle_segment_length(rows: int, columns: int) -> int:
    """The fewest bytes an RLE segment of ``rows x columns`` bytes can take (PS3.5 G.3.1)."""
    return _RLE_RUN_LENGTH * -(-(rows * columns) // _RLE_BYTES_PER_RUN)


def native_length(
    rows: int, columns: int, samples: int, bits_allocated: int, frames: int, photometric: str
) -> int:
    """Bytes of native Pixel Data for the header: Rows x Columns x Samples x Bits Allocated / 8
    x frames (PS3.5 8.1.1, 8.2), with YBR_FULL_422's two bytes of chroma per two pixels
    (PS3.3 C.7.6.3.1.2); the even-length padding byte is not counted.
    """
    per_frame_samples = rows * columns * samples
    if photometric == "YBR_FULL_422" and samples == 3:
        per_frame_samples = rows * columns * 2
    return per_frame_samples * bits_allocated // 8 * frames


class Codec(StrEnum):
    """The stream families of the encapsulated transfer syntaxes the pipeline decodes."""

    JPEG = "JPEG"
    JPEG_LS = "JPEG-LS"
    JPEG_2000 = "JPEG 2000"
    RLE = "RLE"


_CODECS: dict[str, Codec] = {
    uid.JPEGBaseline8Bit: Codec.JPEG,
    uid.JPEGExtended12Bit: Codec.JPEG,
    uid.JPEGLossless: Codec.JPEG,
    uid.JPEGLosslessSV1: Codec.JPEG,
    uid.JPEGLSLossless: Codec.JPEG_LS,
    uid.JPEGLSNearLossless: Codec.JPEG_LS,
    uid.JPEG2000Lossless: Codec.JPEG_2000,
    uid.JPEG2000: Codec.JPEG_2000,
    uid.HTJ2KLossless: Codec.JPEG_2000,
    uid.HTJ2KLosslessRPCL: Codec.JPEG_2000,
    uid.HTJ2K: Codec.JPEG_2000,
    uid.RLELossless: Codec.RLE,
}


def codec_of(transfer_syntax: str) -> Codec | None:
    """The stream family of an encapsulated transfer syntax, ``None`` for any other."""
    return _CODECS.get(transfer_syntax)


@dataclass(frozen=True, slots=True)
class DeclaredFrame:
    """What the Image Pixel module (PS3.3 C.7.6.3) declares for one frame."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int

    def describe(self) -> str:
        """``columns x rows x samples`` as the messages write it."""
        return f"{self.columns}x{self.rows}x{self.samples}"


def _compare(header: FrameHeader, declared: DeclaredFrame, codec: Codec) -> None:
    """Refuse a frame header whose size or samples differ, or whose precision cannot fit.

    Bits Stored is not compared: PS3.5 8.2 lets it differ from the stream's precision, and
    real files do both ways (12-bit JPEG for 10 bits stored, 11-bit J2K for 16 bits stored);
    what matters is that every decoded sample fits the Bits Allocated the pipeline reads.
    """
    said = f"{header.columns}x{header.rows}x{header.components}"
    if (header.columns, header.rows, header.components) != (
        declared.columns,
        declared.rows,
        declared.samples,
    ):
        raise StreamMismatch(
            f"the {codec} stream holds {said} (columns x rows x samples), "
            f"the header declares {declared.describe()}"
        )
    if not 1 <= header.precision <= declared.bits_allocated:
        raise StreamMismatch(
            f"the {codec} stream has {header.precision}-bit samples, "
            f"the header allocates {declared.bits_allocated} bits"
        )


def check_frame(frame: bytes, codec: Codec, declared: DeclaredFrame) -> None:
    """Refuse a compressed frame that contradicts ``declared``, is cut short or is implausibly
    small for its size; reads the frame's header and length only.

    JPEG and JPEG-LS: SOF size, components and precision, the coding process the transfer
    syntax implies, EOI at the end and :func:`minimum_jpeg_length`. JPEG 2000 and HTJ2K: SIZ
    size, components and precision, EOC at the end. RLE: as many segments as samples times
    bytes per sample (PS3.5 G.2), offsets increasing inside the frame, each segment at least
    :func:`minimum_rle_segment_length` and decoding to Rows x Columns bytes
    (:func:`rle_decoded_length`; RLE has no size of its own to compare).

    Raises
    ------
    StreamMismatch
        With a message that names the disagreeing values.
    """
    if codec is Codec.RLE:
        _check_rle(frame, declared)
        return
    if codec is Codec.JPEG_2000:
        header, complete = j2k_size(frame)
        _compare(header, declared, codec)
        if not complete:
            raise StreamMismatch(f"the {codec} stream does not end with EOC: it is cut short")
        return
    jpeg = jpeg_frame(frame)
    if (jpeg.process is Process.JPEG_LS) != (codec is Codec.JPEG_LS):
        raise StreamMismatch(f"a {jpeg.process} frame under a {codec} transfer syntax")
    if jpeg.header.rows == 0:
        raise StreamMismatch(f"the {codec} stream declares no number of lines")
    _compare(jpeg.header, declared, codec)
    if not jpeg.complete:
        raise StreamMismatch(f"the {codec} stream does not end with EOI: it is cut short")
    least = minimum_jpeg_length(jpeg)
    if len(frame) < least:
        raise StreamMismatch(
            f"the {codec} stream has {len(frame)} bytes, {declared.describe()} "
            f"({jpeg.process}) needs at least {least}"
        )


def _check_rle(frame: bytes, declared: DeclaredFrame) -> None:
    """The RLE part of :func:`check_frame` (PS3.5 G.2, G.5)."""
    offsets = rle_offsets(frame)
    expected = declared.samples * declared.bits_allocated // 8
    if len(offsets) != expected:
        raise StreamMismatch(
            f"the RLE frame has {len(offsets)} segments, {declared.samples} samples of "
            f"{declared.bits_allocated} bits need {expected}"
        )
    least = minimum_rle_segment_length(declared.rows, declared.columns)
    ends = (*offsets[1:], len(frame))
    shortest = min(end - start for start, end in zip(offsets, ends, strict=True))
    if shortest < least:
        raise StreamMismatch(
            f"an RLE segment has {shortest} bytes, {declared.columns}x{declared.rows} "
            f"needs at least {least}"
        )
    pixels = declared.rows * declared.columns
    for number, (start, end) in enumerate(zip(offsets, ends, strict=True), start=1):
        decoded = rle_decoded_length(frame[start:end])
        if decoded != pixels:
            raise StreamMismatch(
                f"RLE segment {number} decodes to {decoded} bytes, "
                f"{declared.columns}x{declared.rows} needs {pixels}"
            )
