"""Patient, study and equipment attributes that result objects take from their source image.

Result objects belong to the source's patient and study, so those attributes are copied
element by element, exactly as received (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study,
C.7.2.2 Patient Study, and the clinical trial modules), except values invalid for their VR,
which :mod:`reporting.copied_values` keeps, empties or leaves out; the Specific Character Set
that says how their text is encoded is set on the finished object by :mod:`reporting.charset`.
"""

from __future__ import annotations

import copy
import logging

from highdicom import ContributingEquipment, SOPClass
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from reporting.codes import PROCESSING_EQUIPMENT
from reporting.copied_values import CopiedValueIssue, apply_policy
from reporting.findings import AlgorithmInfo, ResultInputError

# One Implementation Class UID and Version Name for everything this project writes.
from reporting.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

#: Attributes the object builders read from their reference dataset at construction time.
#: Their values are blanked in :func:`neutral_header` so that no patient data passes through
#: the builders' own checks and log messages; the exact values are copied afterwards.
_PATIENT_STUDY_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_IDENTITY_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def copy_patient_and_study(source: Dataset, target: SOPClass) -> list[CopiedValueIssue]:
    """Copy the source's patient and study modules into ``target``, element by element.

    A value invalid for its VR is kept, emptied or left out (:mod:`reporting.copied_values`);
    each such case is logged as a warning that names the result, the attribute and the reason,
    never the value, so that an administrator can see why a result fails validation.

    Returns
    -------
    list[CopiedValueIssue]
        The copied values that were invalid, and what was done with each.

    Raises
    ------
    ResultInputError
        When the source's SOP Class is not a standard one (its modules are unknown).
    """
    try:
        target.copy_patient_and_study_information(source)
    except KeyError as exc:
        raise ResultInputError(
            f"cannot copy patient/study attributes from SOP Class {source.get('SOPClassUID')}"
        ) from exc
    issues = apply_policy(source, target)
    for issue in issues:
        log.warning(
            "result %s (%s): source value of %s",
            target.SOPInstanceUID,
            UID(target.SOPClassUID).name,
            issue,
        )
    return issues


def neutral_header(source: Dataset) -> Dataset:
    """The source's identity (UIDs) with blank patient and study values and no character set.

    Used as the reference dataset when constructing result objects; see
    ``_PATIENT_STUDY_KEYWORDS``. With no text in it, it needs no Specific Character Set, and
    the object-building library does not check one it might refuse (:mod:`reporting.charset`).
    """
    missing = [keyword for keyword in _IDENTITY_KEYWORDS if not source.get(keyword)]
    if missing:
        raise ResultInputError(f"source image lacks {', '.join(missing)}")
    header = Dataset()
    for keyword in _IDENTITY_KEYWORDS:
        header[keyword] = copy.deepcopy(source[keyword])
    for keyword in _PATIENT_STUDY_KEYWORDS:
        setattr(header, keyword, None)
    return header


def mark_implementation(target: Dataset) -> None:
    """Name this project, not the object-building library, as the file's implementation.

    Implementation Class UID and Version Name of the File Meta Information (PS3.10 7.1).
    """
    target.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    target.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    # Writing the meta information recomputes its File Meta Information Group Length.
    write_file_meta_info(DicomBytesIO(), target.file_meta, enforce_standard=True)


def contributing_equipment(
    source: Dataset, algorithm: AlgorithmInfo, description: str
) -> list[ContributingEquipment]:
    """Contributing Equipment (PS3.3 C.12.1.1.5): the source's acquisition device, if known,
    then the algorithm as processing equipment."""
    return [
        *acquisition_equipment(source),
        ContributingEquipment(
            manufacturer=algorithm.manufacturer,
            purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            contribution_description=description,
        ),
    ]


def acquisition_equipment(source: Dataset) -> list[ContributingEquipment]:
    """The source's acquisition equipment as a Contributing Equipment item, when it is known."""
    try:
        return [ContributingEquipment.for_image_acquisition(source)]
    except (AttributeError, ValueError, KeyError):
        # No Manufacturer, or not an image SOP Class: nothing to say about the equipment.
        return []
