"""The DICOM audit message (PS3.15 A.5.1): who did what to which object, as XML for a collector.

Built from explicit, validated parts named as in the standard's schema: an
``EventIdentification``, one or more ``ActiveParticipant``, an ``AuditSourceIdentification`` and
any number of ``ParticipantObjectIdentification``. Coded values carry ``csd-code``,
``codeSystemName`` and ``originalText`` (the code meaning). Elements are written in the schema's
order, so a validating audit repository accepts them.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum

from audit.codes import AuditAction, AuditOutcome, AuditSourceType, Code, ParticipantIdType


class NetworkAccessPointType(IntEnum):
    """Network Access Point Type Code (PS3.15 A.5.2.1; RFC 3881 5.3.6)."""

    MACHINE_NAME = 1
    IP_ADDRESS = 2


class ParticipantObjectType(IntEnum):
    """Participant Object Type Code (RFC 3881 5.5.1)."""

    PERSON = 1
    SYSTEM_OBJECT = 2


class ParticipantObjectRole(IntEnum):
    """Participant Object Type Code Role (RFC 3881 5.5.2)."""

    PATIENT = 1
    REPORT = 3
    SECURITY_RESOURCE = 13


def access_point_type(address: str) -> NetworkAccessPointType:
    """An IP address is type 2, anything else a machine name (type 1)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return NetworkAccessPointType.MACHINE_NAME
    return NetworkAccessPointType.IP_ADDRESS


@dataclass(frozen=True, slots=True)
class ActiveParticipant:
    """A person or process taking part in the event (PS3.15 A.5.2.1)."""

    user_id: str
    is_requestor: bool
    roles: tuple[Code, ...] = ()
    alternative_user_id: str | None = None
    network_access_point: str | None = None

    def __post_init__(self) -> None:
        if not self.user_id:
            raise ValueError("an active participant needs a UserID")

    @classmethod
    def dicom_node(
        cls, ae_title: str, *, role: Code, is_requestor: bool, address: str | None = None
    ) -> ActiveParticipant:
        """A DICOM application entity: its AE title as UserID and as ``AETITLES=``."""
        return cls(
            user_id=ae_title,
            is_requestor=is_requestor,
            roles=(role,),
            alternative_user_id=f"AETITLES={ae_title}",
            network_access_point=address or None,
        )


@dataclass(frozen=True, slots=True)
class SopClassCount:
    """How many instances of one SOP class an event concerned (the ``SOPClass`` element)."""

    uid: str
    count: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"NumberOfInstances cannot be negative: {self.count}")


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """An object the event concerned (PS3.15 A.5.2.5): a study, a patient, a node."""

    object_id: str
    id_type: Code
    type_code: ParticipantObjectType
    role: ParticipantObjectRole
    sop_classes: tuple[SopClassCount, ...] = ()

    def __post_init__(self) -> None:
        if not self.object_id:
            raise ValueError(f"a participant object of type {self.id_type.meaning} needs an ID")

    @classmethod
    def study(cls, uid: str, sop_classes: Sequence[SopClassCount] = ()) -> ParticipantObject:
        """A study by its Study Instance UID, with the instances per SOP class."""
        return cls(
            uid,
            ParticipantIdType.STUDY_INSTANCE_UID,
            ParticipantObjectType.SYSTEM_OBJECT,
            ParticipantObjectRole.REPORT,
            tuple(sop_classes),
        )

    @classmethod
    def patient(cls, patient_id: str) -> ParticipantObject:
        """The patient by Patient ID (the ATNA patient participant)."""
        return cls(
            patient_id,
            ParticipantIdType.PATIENT_NUMBER,
            ParticipantObjectType.PERSON,
            ParticipantObjectRole.PATIENT,
        )

    @classmethod
    def node(cls, address: str) -> ParticipantObject:
        """A network node, the subject of a security alert, by its address."""
        return cls(
            address,
            ParticipantIdType.NODE_ID,
            ParticipantObjectType.SYSTEM_OBJECT,
            ParticipantObjectRole.SECURITY_RESOURCE,
        )


@dataclass(frozen=True, slots=True)
class AuditSource:
    """The system that reports the event (``AuditSourceIdentification``)."""

    source_id: str
    enterprise_site_id: str | None = None
    type_code: Code = AuditSourceType.APPLICATION_SERVER

    def __post_init__(self) -> None:
        if not self.source_id:
            raise ValueError("an audit source needs an AuditSourceID")


@dataclass(frozen=True, slots=True)
class AuditMessage:
    """One audit event as PS3.15 A.5.1 describes it.

    Parameters
    ----------
    event_id
        EventID, PS3.16 CID 400 (e.g. 110104 DICOM Instances Transferred).
    action
        EventActionCode: C, R, U, D or E.
    outcome
        EventOutcomeIndicator: 0, 4, 8 or 12.
    occurred_at
        EventDateTime; must carry a time zone.
    participants
        At least one ActiveParticipant.
    source
        AuditSourceIdentification.
    event_types
        EventTypeCode values (e.g. 110126 Node Authentication for a security alert).
    outcome_description
        EventOutcomeDescription: why it failed, in words; never patient data.
    objects
        ParticipantObjectIdentification values.
    """

    event_id: Code
    action: AuditAction
    outcome: AuditOutcome
    occurred_at: datetime
    participants: tuple[ActiveParticipant, ...]
    source: AuditSource
    event_types: tuple[Code, ...] = ()
    outcome_description: str | None = None
    objects: tuple[ParticipantObject, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.participants:
            raise ValueError("an audit message needs at least one ActiveParticipant")
        if self.occurred_at.tzinfo is None:
            raise ValueError(f"EventDateTime needs a time zone: {self.occurred_at.isoformat()}")

    def to_xml(self) -> bytes:
        """The message as UTF-8 XML with an XML declaration."""
        root = ET.Element("AuditMessage")
        event = ET.SubElement(
            root,
            "EventIdentification",
            EventActionCode=str(self.action.value),
            EventDateTime=_xsd_datetime(self.occurred_at),
            EventOutcomeIndicator=str(int(self.outcome)),
        )
        _coded(event, "EventID", self.event_id)
        for event_type in self.event_types:
            _coded(event, "EventTypeCode", event_type)
        if self.outcome_description:
            ET.SubElement(event, "EventOutcomeDescription").text = self.outcome_description
        for participant in self.participants:
            _participant(root, participant)
        source = ET.SubElement(
            root, "AuditSourceIdentification", AuditSourceID=self.source.source_id
        )
        if self.source.enterprise_site_id:
            source.set("AuditEnterpriseSiteID", self.source.enterprise_site_id)
        _coded(source, "AuditSourceTypeCode", self.source.type_code)
        for obj in self.objects:
            _object(root, obj)
        return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _xsd_datetime(moment: datetime) -> str:
    """xsd:dateTime in UTC with a ``Z``, to the microsecond."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {"csd-code": code.value, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def _participant(root: ET.Element, participant: ActiveParticipant) -> None:
    element = ET.SubElement(root, "ActiveParticipant", UserID=participant.user_id)
    if participant.alternative_user_id:
        element.set("AlternativeUserID", participant.alternative_user_id)
    element.set("UserIsRequestor", "true" if participant.is_requestor else "false")
    if participant.network_access_point:
        element.set("NetworkAccessPointID", participant.network_access_point)
        element.set(
            "NetworkAccessPointTypeCode",
            str(int(access_point_type(participant.network_access_point))),
        )
    for role in participant.roles:
        _coded(element, "RoleIDCode", role)


def _object(root: ET.Element, obj: ParticipantObject) -> None:
    element = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=obj.object_id,
        ParticipantObjectTypeCode=str(int(obj.type_code)),
        ParticipantObjectTypeCodeRole=str(int(obj.role)),
    )
    _coded(element, "ParticipantObjectIDTypeCode", obj.id_type)
    for sop_class in obj.sop_classes:
        ET.SubElement(
            element, "SOPClass", UID=sop_class.uid, NumberOfInstances=str(sop_class.count)
        )
