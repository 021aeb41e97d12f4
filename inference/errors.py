"""Named errors at the inference boundary: DICOM input the pipeline refuses to analyse."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why an image is not analysable; the values are stable, machine-usable codes."""

    #: An element pydicom cannot read: an unknown VR, a value its VR cannot hold.
    MALFORMED_ELEMENT = "malformed_element"
    NO_PIXEL_DATA = "no_pixel_data"
    MULTI_FRAME = "multi_frame"
    DIMENSIONS = "dimensions"
    TRUNCATED = "truncated"
    #: The Pixel Data contradicts the Image Pixel module: see :mod:`inference.streams`.
    PIXEL_DATA_MISMATCH = "pixel_data_mismatch"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"
    UNDECODABLE = "undecodable"
    #: Decoding ran past ``decode_timeout_s`` and its child process was killed
    #: (:mod:`inference.isolation`): a codec looping on a hostile stream.
    DECODE_TIMEOUT = "decode_timeout"
    INVALID_LUT = "invalid_lut"
    OUT_OF_SCOPE = "out_of_scope"


class NotAnalysable(ValueError):  # noqa: N818 - the name the project's contract uses
    """A DICOM image the pipeline refuses to turn into a model input.

    Parameters
    ----------
    reason:
        A short code (a :class:`Reason` value) that callers may store or count.
    message:
        A human explanation. It must never contain patient data: only header values that
        describe the pixels (sizes, bit depths, UIDs of transfer syntaxes).
    """

    def __init__(self, reason: Reason | str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: str = str(reason)
        self.message = message

    def __reduce__(self) -> tuple[type[NotAnalysable], tuple[str, str]]:
        # Keeps the two-argument constructor picklable (worker processes, job queues).
        return (type(self), (self.reason, self.message))
