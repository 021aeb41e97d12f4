"""Coded concepts of the DICOM audit message (PS3.15 A.5, PS3.16 CID 400-405, RFC 3881).

One home for the codes so that the review API and the DICOM node use the same words: a code
is a value, its coding scheme and its meaning (the standard's ``originalText``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

#: The DICOM coding scheme designator (PS3.16 Annex D).
DCM = "DCM"
#: Codes RFC 3881 defines itself (participant object ID types, among others).
RFC_3881 = "RFC-3881"


class AuditOutcome(IntEnum):
    """Event Outcome Indicator, DICOM PS3.15 A.5.3 (RFC 3881)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class AuditAction(StrEnum):
    """Event Action Code, DICOM PS3.15 A.5.3: create, read, update, delete, execute."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept; ``scheme`` is DCM unless said otherwise."""

    value: str
    meaning: str
    scheme: str = DCM


class EventId:
    """Audit Event ID codes, PS3.16 CID 400 (the events of PS3.15 A.5.3)."""

    APPLICATION_ACTIVITY = Code("110100", "Application Activity")
    AUDIT_LOG_USED = Code("110101", "Audit Log Used")
    BEGIN_TRANSFERRING = Code("110102", "Begin Transferring DICOM Instances")
    INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
    EXPORT = Code("110106", "Export")
    IMPORT = Code("110107", "Import")
    PATIENT_RECORD = Code("110110", "Patient Record")
    QUERY = Code("110112", "Query")
    SECURITY_ALERT = Code("110113", "Security Alert")
    USER_AUTHENTICATION = Code("110114", "User Authentication")


class EventType:
    """Audit Event Type codes, PS3.16 CID 401 (application), 402 (authentication), 403 (alerts)."""

    APPLICATION_START = Code("110120", "Application Start")
    APPLICATION_STOP = Code("110121", "Application Stop")
    LOGIN = Code("110122", "Login")
    NODE_AUTHENTICATION = Code("110126", "Node Authentication")
    SECURITY_CONFIGURATION = Code("110129", "Security Configuration")
    SOFTWARE_CONFIGURATION = Code("110131", "Software Configuration")
    USE_OF_RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
    SECURITY_ROLES_CHANGED = Code("110136", "Security Roles Changed")
    USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "User security Attributes Changed")


class RoleId:
    """Audit Active Participant Role ID codes, PS3.16 CID 402."""

    APPLICATION = Code("110150", "Application")
    APPLICATION_LAUNCHER = Code("110151", "Application Launcher")
    DESTINATION = Code("110152", "Destination Role ID")
    SOURCE = Code("110153", "Source Role ID")


class ParticipantIdType:
    """Participant Object ID Type codes (PS3.15 A.5.2.5; RFC 3881 5.5.4)."""

    PATIENT_NUMBER = Code("2", "Patient Number", RFC_3881)
    STUDY_INSTANCE_UID = Code("110180", "Study Instance UID")
    NODE_ID = Code("110182", "Node ID")


class AuditSourceType:
    """Audit Source Type codes (PS3.15 A.5.1; RFC 3881 5.4.3)."""

    APPLICATION_SERVER = Code("4", "Application Server process tier in a multi-tier system")
