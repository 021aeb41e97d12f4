"""Coded concepts used in the result objects (PS3.16), in one place.

Standard codes come from pydicom's tables of the DICOM content mapping resource where it has
them; the probability of fracture has no standard concept, so it is coded in this project's
local coding scheme, which every SR declares in its Coding Scheme Identification Sequence
(PS3.3 C.12.1.1.2 and PS3.16 Section 8: local designators begin with ``99``).
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

#: Local coding scheme of this project.
LOCAL_SCHEME_DESIGNATOR = "99FRACGW"
LOCAL_SCHEME_NAME = "fracture-gateway local codes"
LOCAL_SCHEME_RESPONSIBLE = "fracture-gateway"

#: (125605004, SCT, "Fracture of bone"): the finding evaluated in every measurement group.
FRACTURE = Code("125605004", "SCT", "Fracture of bone")
#: CID 240 "Present-Absent" values, as tabulated in the current standard.
PRESENT: Code = codes.cid240.Present
ABSENT: Code = codes.cid240.Absent
#: Calibrated model probability that the image (or study) shows a fracture.
FRACTURE_PROBABILITY = Code("FRACPROB", LOCAL_SCHEME_DESIGNATOR, "Probability of fracture")
#: (122411, DCM, "Threshold Value"): the operating point's decision threshold.
THRESHOLD_VALUE: Code = codes.DCM.ThresholdValue
#: (1, UCUM, "no units"): probabilities and thresholds are dimensionless.
UNITLESS: Code = codes.UCUM.NoUnits
#: (168537006, SCT, "Plain radiography"): procedure reported when the source names none.
PLAIN_RADIOGRAPHY = Code("168537006", "SCT", "Plain radiography")
#: (121322, DCM, "Source image for image processing operation"), CID 7202.
SOURCE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")
#: (109102, DCM, "Processing Equipment"), CID 7005: how the algorithm takes part in an object.
PROCESSING_EQUIPMENT: Code = codes.DCM.ProcessingEquipment

_anatomy = codes.cid4031
#: Body Part Examined (0018,0015) defined terms -> anatomic region (PS3.16 Annex L, CID 4031).
#: ``THORAX`` is not a defined term but is common in the field; it means the chest.
BODY_PART_CODES: dict[str, Code] = {
    "ABDOMEN": _anatomy.Abdomen,
    "ANKLE": _anatomy.AnkleJoint,
    "ARM": _anatomy.UpperArm,
    "CHEST": _anatomy.Chest,
    "CLAVICLE": _anatomy.Clavicle,
    "COCCYX": _anatomy.Coccyx,
    "CSPINE": _anatomy.CervicalSpine,
    "ELBOW": _anatomy.ElbowJoint,
    "EXTREMITY": _anatomy.Extremity,
    "FEMUR": _anatomy.Femur,
    "FINGER": _anatomy.Finger,
    "FOOT": _anatomy.Foot,
    "FOREARM": _anatomy.Forearm,
    "HAND": _anatomy.Hand,
    "HIP": _anatomy.Hip,
    "HUMERUS": _anatomy.Humerus,
    "KNEE": _anatomy.Knee,
    "LEG": _anatomy.LowerLeg,
    "LOWERLIMB": _anatomy.LowerLimb,
    "LSPINE": _anatomy.LumbarSpine,
    "PELVIS": _anatomy.Pelvis,
    "RIB": _anatomy.Rib,
    "SACRUM": _anatomy.Sacrum,
    "SCAPULA": _anatomy.Scapula,
    "SHOULDER": _anatomy.Shoulder,
    "SKULL": _anatomy.Skull,
    "SPINE": _anatomy.Spine,
    "THIGH": _anatomy.Thigh,
    "THORAX": _anatomy.Chest,
    "TOE": _anatomy.Toe,
    "TSPINE": _anatomy.ThoracicSpine,
    "UPPERLIMB": _anatomy.UpperLimb,
    "WRIST": _anatomy.WristJoint,
}


#: Body Part Examined defined terms of unpaired structures (PS3.16 Annex L, Table L-1): a series
#: of one of these has no Laterality (0020,0060), which PS3.3 C.7.3.1 requires only for paired
#: structures. Every other term, and an absent one, is treated as possibly paired.
UNPAIRED_BODY_PARTS: frozenset[str] = frozenset(
    {
        "ABDOMEN",
        "ABDOMENPELVIS",
        "BLADDER",
        "BRAIN",
        "CHEST",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "COCCYX",
        "CSPINE",
        "CTSPINE",
        "ESOPHAGUS",
        "FACE",
        "HEAD",
        "HEADNECK",
        "HEART",
        "JAW",
        "LARYNX",
        "LIVER",
        "LSPINE",
        "LSSPINE",
        "MAXILLA",
        "NECK",
        "NOSE",
        "PELVIS",
        "PROSTATE",
        "SKULL",
        "SPINE",
        "SPLEEN",
        "SSPINE",
        "STERNUM",
        "STOMACH",
        "TLSPINE",
        "TRACHEA",
        "TSPINE",
        "UTERUS",
        "WHOLEBODY",
    }
)


def body_part_term(source: Dataset) -> str | None:
    """Body Part Examined (0018,0015) as a defined term would be spelled, or ``None``."""
    value = source.get("BodyPartExamined")
    if not value:
        return None
    return str(value).strip().upper().replace(" ", "") or None


def body_part_code(source: Dataset) -> Code | None:
    """The anatomic region of Body Part Examined, or ``None`` when absent or not mapped."""
    term = body_part_term(source)
    return None if term is None else BODY_PART_CODES.get(term)


def finding_value(positive: bool) -> Code:
    """``Present`` or ``Absent`` for the fracture finding."""
    return PRESENT if positive else ABSENT
