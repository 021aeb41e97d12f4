"""The study's AI result as a TID 1500 Measurement Report in a Comprehensive 3D SR.

Shaped after the IHE AI Results (AIR) profile: the algorithm is the (device) observer, the
procedure reported is the imaging procedure, every analysed image has a measurement group
(TID 1501) with the fracture finding present/absent, its probability, the decision threshold,
the finding site and TID 4019 Algorithm Identification; a last group carries the study-level
call. Source images and the heat-map Secondary Captures are listed as evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)
from highdicom.sr.enum import GraphicTypeValues
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from reporting.charset import apply_character_set
from reporting.codes import (
    FRACTURE,
    FRACTURE_PROBABILITY,
    LOCAL_SCHEME_DESIGNATOR,
    LOCAL_SCHEME_NAME,
    LOCAL_SCHEME_RESPONSIBLE,
    PLAIN_RADIOGRAPHY,
    PRESENT,
    THRESHOLD_VALUE,
    UNITLESS,
    body_part_code,
    finding_value,
)
from reporting.findings import FindingRegion, ImageFinding, ResultInputError, StudyFindings
from reporting.headers import (
    contributing_equipment,
    copy_patient_and_study,
    mark_implementation,
    neutral_header,
)
from reporting.uids import device_uid, tracking_uid

#: Series Number (0020,0011) of the SR series.
SR_SERIES_NUMBER: Final = 9900
SR_SERIES_DESCRIPTION: Final = "AI fracture detection result - for review"
#: Device Observer Name (TID 1004) of this system.
DEVICE_OBSERVER_NAME: Final = "fracture-gateway"

__all__ = ["SR_SERIES_NUMBER", "algorithm_parameters", "build_sr", "procedure_reported"]


def procedure_reported(source: Dataset) -> list[CodedConcept]:
    """Procedure Reported (TID 1500 row 4): the source's Procedure Code Sequence, if usable.

    Falls back to (168537006, SCT, "Plain radiography") when the source names no procedure.
    """
    concepts: list[CodedConcept] = []
    for item in source.get("ProcedureCodeSequence", []):
        value = item.get("CodeValue")
        scheme = item.get("CodingSchemeDesignator")
        meaning = item.get("CodeMeaning")
        if value and scheme and meaning:
            concepts.append(
                CodedConcept(
                    value=str(value),
                    scheme_designator=str(scheme),
                    meaning=str(meaning),
                    scheme_version=item.get("CodingSchemeVersion"),
                )
            )
    return concepts or [CodedConcept.from_code(PLAIN_RADIOGRAPHY)]


def algorithm_parameters(findings: StudyFindings) -> list[str]:
    """Algorithm Parameters (TID 4019 row 4) as ``name=value`` strings, operating point first."""
    point = findings.operating_point
    parameters = [f"operating_point={point.name}", f"threshold={point.threshold:g}"]
    if point.sensitivity is not None:
        parameters.append(f"validation_sensitivity={point.sensitivity:g}")
    if point.specificity is not None:
        parameters.append(f"validation_specificity={point.specificity:g}")
    extra = sorted(findings.algorithm.parameters.items())
    parameters.extend(f"{key}={value}" for key, value in extra)
    return parameters


def _algorithm_identification(findings: StudyFindings) -> AlgorithmIdentification:
    algorithm = findings.algorithm
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=algorithm_parameters(findings),
        manufacturer=algorithm.manufacturer,
    )


def _fracture_measurements(probability: float, threshold: float) -> list[Measurement]:
    return [
        Measurement(name=FRACTURE_PROBABILITY, value=probability, unit=UNITLESS),
        Measurement(name=THRESHOLD_VALUE, value=threshold, unit=UNITLESS),
    ]


def _finding_sites(codes_: Sequence[Code | None]) -> list[FindingSite] | None:
    unique: dict[tuple[str, str], Code] = {}
    for code in codes_:
        if code is not None:
            unique.setdefault((code.value, code.scheme_designator), code)
    return [FindingSite(anatomic_location=code) for code in unique.values()] or None


def _image_groups(findings: StudyFindings) -> list[MeasurementsAndQualitativeEvaluations]:
    algorithm = findings.algorithm
    groups = []
    for number, image in enumerate(findings.images, start=1):
        source = image.source
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=tracking_uid(
                        findings.study_instance_uid,
                        algorithm.name,
                        algorithm.version,
                        str(source.SOPInstanceUID),
                    ),
                    identifier=f"Image {number} fracture assessment",
                ),
                algorithm_id=_algorithm_identification(findings),
                finding_sites=_finding_sites([body_part_code(source)]),
                measurements=_fracture_measurements(
                    image.probability, findings.operating_point.threshold
                ),
                qualitative_evaluations=[
                    QualitativeEvaluation(name=FRACTURE, value=finding_value(image.positive))
                ],
                source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
            )
        )
    return groups


def region_outline(region: FindingRegion) -> np.ndarray:
    """The region's box as a closed POLYLINE (five ``(column, row)`` points, PS3.3 C.18.6.1.2)."""
    x0, y0, x1, y1 = region.x0, region.y0, region.x1, region.y1
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _region_groups(
    findings: StudyFindings,
) -> list[PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1410 group per suspected fracture region: SCOORD box on the source image."""
    groups = []
    for number, image in enumerate(findings.images, start=1):
        groups.extend(_image_region_groups(findings, image, number))
    return groups


def _image_region_groups(
    findings: StudyFindings, image: ImageFinding, number: int
) -> list[PlanarROIMeasurementsAndQualitativeEvaluations]:
    algorithm = findings.algorithm
    source = image.source
    groups = []
    for index, region in enumerate(image.regions, start=1):
        points = ", ".join(region.operating_points)
        groups.append(
            PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=tracking_uid(
                        findings.study_instance_uid,
                        algorithm.name,
                        algorithm.version,
                        f"{source.SOPInstanceUID}/region{index}",
                    ),
                    identifier=f"Image {number} suspected fracture {index} ({points})",
                ),
                referenced_region=ImageRegion(
                    graphic_type=GraphicTypeValues.POLYLINE,
                    graphic_data=region_outline(region),
                    source_image=SourceImageForRegion.from_source_image(source),
                ),
                finding_type=FRACTURE,
                algorithm_id=_algorithm_identification(findings),
                finding_sites=_finding_sites([body_part_code(source)]),
                measurements=[
                    # Six decimals: a DS holds 16 characters, so a longer float would not
                    # read back as the value written.
                    Measurement(
                        name=FRACTURE_PROBABILITY, value=round(region.probability, 6), unit=UNITLESS
                    )
                ],
                qualitative_evaluations=[QualitativeEvaluation(name=FRACTURE, value=PRESENT)],
            )
        )
    return groups


def _study_group(findings: StudyFindings) -> MeasurementsAndQualitativeEvaluations:
    algorithm = findings.algorithm
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=tracking_uid(
                findings.study_instance_uid, algorithm.name, algorithm.version, "study"
            ),
            identifier="Study fracture assessment",
        ),
        algorithm_id=_algorithm_identification(findings),
        finding_sites=_finding_sites([body_part_code(image.source) for image in findings.images]),
        measurements=_fracture_measurements(
            findings.study_probability, findings.operating_point.threshold
        ),
        qualitative_evaluations=[
            QualitativeEvaluation(name=FRACTURE, value=finding_value(findings.study_positive))
        ],
    )


def _observation_context(findings: StudyFindings) -> ObservationContext:
    algorithm = findings.algorithm
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=device_uid(algorithm.name, algorithm.version),
                name=DEVICE_OBSERVER_NAME,
                manufacturer_name=algorithm.manufacturer,
                model_name=f"{algorithm.name} {algorithm.version}",
            ),
        )
    )


def _check_secondary_captures(findings: StudyFindings, sc_datasets: Sequence[Dataset]) -> None:
    for dataset in sc_datasets:
        if str(dataset.get("StudyInstanceUID", "")) != findings.study_instance_uid:
            raise ResultInputError("every Secondary Capture must belong to the reported study")
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not dataset.get(keyword):
                raise ResultInputError(f"Secondary Capture lacks {keyword}")


def build_sr(
    findings: StudyFindings,
    *,
    sc_datasets: Sequence[Dataset],
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
    predecessors: Sequence[Dataset] = (),
) -> Dataset:
    """Build the study's result SR: TID 1500 Measurement Report in a Comprehensive 3D SR.

    Parameters
    ----------
    findings
        The model's results for the study.
    sc_datasets
        The heat-map Secondary Captures made for this study (may be empty); they are listed
        with the source images in the Current Requested Procedure Evidence Sequence.
    series_instance_uid, sop_instance_uid
        UIDs of the SR series and instance (see :mod:`reporting.uids`).
    series_number, instance_number
        Series Number and Instance Number of the SR.
    predecessors
        Earlier SRs of this study that this one replaces (a study reopened by late images):
        each needs only its Study, Series and SOP Instance UIDs and SOP Class UID. They are
        listed in the Predecessor Documents Sequence (0040,A360; PS3.3 C.17.2.3).

    Returns
    -------
    pydicom.Dataset
        Comprehensive 3D SR (PS3.3 A.35.13, SOP Class 1.2.840.10008.5.1.4.1.1.88.34), content
        TID 1500, Completion Flag ``COMPLETE``, Preliminary Flag ``PRELIMINARY``, Verification
        Flag ``UNVERIFIED``; patient and study attributes copied from the first source image.

    Raises
    ------
    ResultInputError
        When a Secondary Capture belongs to another study or lacks its UIDs.
    """
    _check_secondary_captures(findings, sc_datasets)
    first_source = findings.images[0].source
    algorithm = findings.algorithm

    report = MeasurementReport(
        observation_context=_observation_context(findings),
        procedure_reported=procedure_reported(first_source),
        imaging_measurements=[
            *_image_groups(findings),
            *_region_groups(findings),
            _study_group(findings),
        ],
    )
    evidence = [
        neutral_header(first_source),
        *(image.source for image in findings.images[1:]),
        *sc_datasets,
    ]
    sr = Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=LOCAL_SCHEME_DESIGNATOR,
                name=LOCAL_SCHEME_NAME,
                responsible_organization=LOCAL_SCHEME_RESPONSIBLE,
            )
        ],
        contributing_equipment=contributing_equipment(
            first_source, algorithm, "Fracture detection model that produced the findings"
        ),
        previous_versions=list(predecessors) or None,
    )
    copy_patient_and_study(first_source, sr)
    mark_implementation(sr)
    apply_character_set(first_source, sr)
    return sr
