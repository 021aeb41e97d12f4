"""Is this radiograph one the model covers? The out-of-scope guard, from the DICOM header.

A model package may state its scope in the card (``scope.body_parts``: the Body Part Examined
terms it was trained on, PS3.16 Annex L). An image is refused as *not applicable*, never given a
fracture probability, when

* its Body Part Examined (0018,0015) is present and not one of those terms (a chest, a skull,
  a spine), or
* its patient is not human: Patient Species Description (0010,2201) other than human, or a
  Patient Species Code Sequence (0010,2202) without SNOMED CT 337915000 "Homo sapiens" (a
  veterinary radiograph).

An image that states no body part is analysed: the header cannot tell, and FracAtlas-style
exports often omit it. A picture upload (PNG, JPEG) carries no header and is not checked here.
"""

from __future__ import annotations

from collections.abc import Collection

from pydicom import Dataset

from inference.errors import NotAnalysable, Reason

#: Body Part Examined terms of the FracAtlas regions (hand, leg, hip, shoulder) and the limbs
#: they belong to: what a model trained on FracAtlas covers.
FRACATLAS_BODY_PARTS: tuple[str, ...] = (
    "ANKLE",
    "ARM",
    "CLAVICLE",
    "ELBOW",
    "EXTREMITY",
    "FEMUR",
    "FINGER",
    "FOOT",
    "FOREARM",
    "HAND",
    "HIP",
    "HUMERUS",
    "KNEE",
    "LEG",
    "LOWERLIMB",
    "PELVIS",
    "SCAPULA",
    "SHOULDER",
    "THIGH",
    "TOE",
    "UPPERLIMB",
    "WRIST",
)
#: SNOMED CT "Homo sapiens" (CID 7454 Animal Taxonomic Rank Values).
HOMO_SAPIENS = ("337915000", "SCT")
_HUMAN_WORDS = {"HOMO SAPIENS", "HUMAN", "HUMANS"}


def _species_is_human(ds: Dataset) -> bool | None:
    """True / False when the header says, ``None`` when it does not (most human images)."""
    codes = ds.get("PatientSpeciesCodeSequence")
    if codes:
        return any(
            (str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")))
            in {HOMO_SAPIENS, (HOMO_SAPIENS[0], "SRT")}
            for item in codes
        )
    description = str(ds.get("PatientSpeciesDescription") or "").strip().upper()
    if description:
        return description in _HUMAN_WORDS
    return None


def check_in_scope(ds: Dataset, body_parts: Collection[str]) -> None:
    """Raise :class:`NotAnalysable` (``out_of_scope``) for an image the model does not cover.

    ``body_parts`` is the card's list of covered Body Part Examined terms; empty means the
    model states no scope and only the species is checked. The message names the body part
    term (a defined term, not patient data) but never the patient.
    """
    if _species_is_human(ds) is False:
        raise NotAnalysable(
            Reason.OUT_OF_SCOPE, "not applicable: the patient is not human (veterinary image)"
        )
    if not body_parts:
        return
    value = str(ds.get("BodyPartExamined") or "").strip().upper()
    if value and value not in {part.upper() for part in body_parts}:
        shown = value if value.replace("_", "").isalnum() and len(value) <= 16 else "given"
        raise NotAnalysable(
            Reason.OUT_OF_SCOPE,
            f"not applicable: body part {shown} is outside the model's scope "
            "(hand, arm, shoulder, hip, leg and foot radiographs)",
        )
