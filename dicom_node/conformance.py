"""What the node speaks: SOP classes, transfer syntaxes and the statuses it returns.

The DICOM conformance summary in the README is written from these constants.
"""

from __future__ import annotations

from enum import IntEnum

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

#: Verification SOP Class (C-ECHO).
VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")
#: Computed Radiography Image Storage.
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
#: Digital X-Ray Image Storage - For Presentation.
DX_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
#: Digital X-Ray Image Storage - For Processing.
DX_PROCESSING_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
#: The storage SOP classes that are analysed; every other storage class is out of scope.
RADIOGRAPH_SOP_CLASSES: frozenset[str] = frozenset(
    {CR_IMAGE_STORAGE, DX_PRESENTATION_STORAGE, DX_PROCESSING_STORAGE}
)

#: Offered for every storage SOP class, in order of preference. Each one's pixel data is
#: decodable by ``inference.pixels`` (a test holds the two lists together); anything else is
#: refused at negotiation so the sender can fall back to one of these.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)


class StoreStatus(IntEnum):
    """C-STORE response statuses we return (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    #: Refused: out of resources (disk full, database unavailable).
    OUT_OF_RESOURCES = 0xA700
    #: Error: the data set's SOP Class differs from the request's Affected SOP Class.
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Error: cannot understand (the data set cannot be parsed).
    CANNOT_UNDERSTAND = 0xC000
    #: Error: required identifiers (SOP class, study, series, instance UID) missing or not valid
    #: UIDs (PS3.5 9.1: too long, not digits and dots, a component with a leading zero).
    MISSING_IDENTIFIERS = 0xC001
    #: Error: the data set's SOP Instance UID differs from the request's.
    INSTANCE_UID_MISMATCH = 0xC002
    #: Error: same SOP Instance UID with different content, refused by the duplicate policy.
    DUPLICATE_CONFLICT = 0xC003
    #: Failure: processing failure (an unexpected error; nothing was kept).
    PROCESSING_FAILURE = 0x0110
