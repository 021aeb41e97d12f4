"""Upper Layer PDU framing: types, declared lengths and their bounds, refusals (PS3.8 9.3).

Every PDU starts with a 6-byte header: type (1 byte), reserved (1), length of the rest (4, big
endian). A peer chooses that length freely, so it is checked against a bound before anything is
allocated for the body. The bounds and the refusal PDUs live here, free of sockets and threads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ

#: Type, reserved, length (PS3.8 Table 9-11 and the tables after it).
HEADER = struct.Struct(">BBL")
HEADER_LENGTH = HEADER.size

#: The largest A-ASSOCIATE-RQ we read. PS3.8 allows at most 128 presentation contexts (odd IDs
#: 1-255); with an abstract syntax and 12 transfer syntaxes each, every UID at its maximum of 64
#: characters, they take 128 * (8 + 68 + 12 * 68) = 114,176 bytes; the rest leaves room for user
#: information (maximum length, implementation UID, roles, a user identity token).
MAX_ASSOCIATE_LENGTH = 128 * 1024


class PduType(IntEnum):
    """PDU types (PS3.8 9.3.1)."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class AbortSource(IntEnum):
    """A-ABORT source (PS3.8 Table 9-26)."""

    SERVICE_USER = 0x00
    SERVICE_PROVIDER = 0x02


class AbortReason(IntEnum):
    """A-ABORT reason/diagnostic when the source is the service provider (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0x00
    UNRECOGNIZED_PDU = 0x01
    UNEXPECTED_PDU = 0x02
    UNRECOGNIZED_PDU_PARAMETER = 0x04
    UNEXPECTED_PDU_PARAMETER = 0x05
    INVALID_PDU_PARAMETER_VALUE = 0x06


@dataclass(frozen=True, slots=True)
class RejectReason:
    """An A-ASSOCIATE-RJ's result, source and reason/diagnostic (PS3.8 Table 9-21)."""

    result: int
    source: int
    reason: int
    name: str

    def encode(self) -> bytes:
        pdu = A_ASSOCIATE_RJ()
        pdu.result = self.result
        pdu.source = self.source
        pdu.reason_diagnostic = self.reason
        return bytes(pdu.encode())


#: Rejected-permanent, service-user: calling AE title not recognised.
CALLING_AE_NOT_RECOGNISED = RejectReason(0x01, 0x01, 0x03, "calling AE title not recognised")
#: Rejected-permanent, service-user: called AE title not recognised.
CALLED_AE_NOT_RECOGNISED = RejectReason(0x01, 0x01, 0x07, "called AE title not recognised")
#: Rejected-transient, service-provider (presentation): local limit exceeded.
LOCAL_LIMIT_EXCEEDED = RejectReason(0x02, 0x03, 0x02, "local limit exceeded")


@dataclass(frozen=True, slots=True)
class PduHeader:
    """A decoded PDU header: its type byte and the length the peer declares for the rest."""

    pdu_type: int
    length: int

    @classmethod
    def decode(cls, header: bytes | bytearray) -> PduHeader:
        pdu_type, _, length = HEADER.unpack(header)
        return cls(pdu_type, length)

    @property
    def known_type(self) -> PduType | None:
        try:
            return PduType(self.pdu_type)
        except ValueError:
            return None


def length_limit(pdu_type: PduType, maximum_pdu_size: int) -> int:
    """The largest length a PDU of ``pdu_type`` may declare on an association we accepted.

    A P-DATA-TF may be as long as the maximum we announced (PS3.8 Table 9-14 and D.1); every other
    PDU is a small control PDU, bounded like an A-ASSOCIATE-RQ.
    """
    if pdu_type is PduType.P_DATA_TF:
        return maximum_pdu_size
    return MAX_ASSOCIATE_LENGTH


def abort_pdu(reason: AbortReason) -> bytes:
    """An A-ABORT from the Upper Layer service provider (us) with ``reason``."""
    pdu = A_ABORT_RQ()
    pdu.source = AbortSource.SERVICE_PROVIDER
    pdu.reason_diagnostic = reason
    return bytes(pdu.encode())
