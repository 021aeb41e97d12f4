"""The DICOM audit message (PS3.15 A.5.1): structure, order and coded values of the XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import pytest

from audit.codes import AuditAction, AuditOutcome, EventId, EventType, RoleId
from audit.message import (
    ActiveParticipant,
    AuditMessage,
    AuditSource,
    ParticipantObject,
    SopClassCount,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
STUDY = "1.2.826.0.1.3680043.8.498.1"


def transferred(**changes: object) -> AuditMessage:
    fields: dict[str, object] = {
        "event_id": EventId.INSTANCES_TRANSFERRED,
        "action": AuditAction.CREATE,
        "outcome": AuditOutcome.SUCCESS,
        "occurred_at": datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
        "participants": (
            ActiveParticipant.dicom_node(
                "PACS1", role=RoleId.SOURCE, is_requestor=True, address="10.0.0.5"
            ),
            ActiveParticipant.dicom_node(
                "FRACTUREGW", role=RoleId.DESTINATION, is_requestor=False, address="gw.example"
            ),
        ),
        "source": AuditSource("FRACTUREGW", "St Elsewhere"),
        "objects": (
            ParticipantObject.study(STUDY, [SopClassCount(CR, 2), SopClassCount(DX, 1)]),
            ParticipantObject.patient("PAT-7"),
        ),
    }
    fields.update(changes)
    return AuditMessage(**fields)  # type: ignore[arg-type]


def coded(element: ET.Element | None) -> tuple[str | None, str | None, str | None]:
    assert element is not None
    return (
        element.get("csd-code"),
        element.get("codeSystemName"),
        element.get("originalText"),
    )


def test_instances_transferred_has_the_schema_s_parts_in_order() -> None:
    xml = transferred().to_xml()
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage"
    assert [child.tag for child in root] == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
    ]
    event = root.find("EventIdentification")
    assert event is not None
    assert event.attrib == {
        "EventActionCode": "C",
        "EventDateTime": "2025-03-04T05:06:07.890123Z",
        "EventOutcomeIndicator": "0",
    }
    assert coded(event.find("EventID")) == ("110104", "DCM", "DICOM Instances Transferred")


def test_participants_name_ae_titles_addresses_and_roles() -> None:
    root = ET.fromstring(transferred().to_xml())
    source, destination = root.findall("ActiveParticipant")
    assert source.attrib == {
        "UserID": "PACS1",
        "AlternativeUserID": "AETITLES=PACS1",
        "UserIsRequestor": "true",
        "NetworkAccessPointID": "10.0.0.5",
        "NetworkAccessPointTypeCode": "2",  # an IP address
    }
    assert coded(source.find("RoleIDCode")) == ("110153", "DCM", "Source Role ID")
    assert destination.get("UserIsRequestor") == "false"
    assert destination.get("NetworkAccessPointTypeCode") == "1"  # a machine name
    assert coded(destination.find("RoleIDCode")) == ("110152", "DCM", "Destination Role ID")
    audit_source = root.find("AuditSourceIdentification")
    assert audit_source is not None
    assert audit_source.get("AuditSourceID") == "FRACTUREGW"
    assert audit_source.get("AuditEnterpriseSiteID") == "St Elsewhere"
    assert coded(audit_source.find("AuditSourceTypeCode"))[0] == "4"


def test_study_and_patient_objects_with_instance_counts() -> None:
    root = ET.fromstring(transferred().to_xml())
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == (
        "2",
        "3",
    )
    assert coded(study.find("ParticipantObjectIDTypeCode")) == (
        "110180",
        "DCM",
        "Study Instance UID",
    )
    assert [(s.get("UID"), s.get("NumberOfInstances")) for s in study.findall("SOPClass")] == [
        (CR, "2"),
        (DX, "1"),
    ]
    assert patient.get("ParticipantObjectID") == "PAT-7"
    assert (
        patient.get("ParticipantObjectTypeCode"),
        patient.get("ParticipantObjectTypeCodeRole"),
    ) == (
        "1",
        "1",
    )
    assert coded(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881", "Patient Number")


def test_security_alert_carries_its_type_and_reason() -> None:
    message = transferred(
        event_id=EventId.SECURITY_ALERT,
        action=AuditAction.EXECUTE,
        outcome=AuditOutcome.MINOR_FAILURE,
        event_types=(EventType.NODE_AUTHENTICATION,),
        outcome_description="A-ASSOCIATE-RJ: called AE title not recognised",
        objects=(ParticipantObject.node("10.9.9.9"),),
    )
    event = ET.fromstring(message.to_xml()).find("EventIdentification")
    assert event is not None
    assert [child.tag for child in event] == ["EventID", "EventTypeCode", "EventOutcomeDescription"]
    assert event.get("EventOutcomeIndicator") == "4"
    assert coded(event.find("EventTypeCode")) == ("110126", "DCM", "Node Authentication")
    assert event.findtext("EventOutcomeDescription") == (
        "A-ASSOCIATE-RJ: called AE title not recognised"
    )


def test_event_time_is_written_in_utc() -> None:
    later = datetime(2025, 3, 4, 7, 6, 7, 890123, tzinfo=timezone(timedelta(hours=2)))
    event = ET.fromstring(transferred(occurred_at=later).to_xml()).find("EventIdentification")
    assert event is not None
    assert event.get("EventDateTime") == "2025-03-04T05:06:07.890123Z"


def test_xml_special_characters_are_escaped() -> None:
    message = transferred(objects=(ParticipantObject.patient('A<B>&"C'),))
    patient = ET.fromstring(message.to_xml()).find("ParticipantObjectIdentification")
    assert patient is not None
    assert patient.get("ParticipantObjectID") == 'A<B>&"C'


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"participants": ()}, "ActiveParticipant"),
        ({"occurred_at": datetime(2025, 1, 1)}, "time zone"),
    ],
)
def test_invalid_messages_are_refused(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        transferred(**changes)


def test_invalid_parts_are_refused() -> None:
    with pytest.raises(ValueError, match="NumberOfInstances"):
        SopClassCount(CR, -1)
    with pytest.raises(ValueError, match="UserID"):
        ActiveParticipant(user_id="", is_requestor=True)
    with pytest.raises(ValueError, match="Study Instance UID"):
        ParticipantObject.study("")
    with pytest.raises(ValueError, match="AuditSourceID"):
        AuditSource("")
