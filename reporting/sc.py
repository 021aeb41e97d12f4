"""Grad-CAM Secondary Capture: the radiograph, its heat map and the result, burned into RGB.

One SC Image (PS3.3 A.8.1) per analysed radiograph, in its own series of the source's study.
The picture is drawn by :mod:`reporting.render`; this module only wraps it in DICOM.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Final

from highdicom.sc import SCImage
from highdicom.sr import CodedConcept
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from reporting.charset import apply_character_set
from reporting.codes import SOURCE_FOR_PROCESSING, UNPAIRED_BODY_PARTS, body_part_term
from reporting.findings import ImageFinding, ResultInputError, StudyFindings
from reporting.headers import (
    contributing_equipment,
    copy_patient_and_study,
    mark_implementation,
)
from reporting.render import BannerText, RegionMark, Rendering, compose_gradcam

#: The operating point whose regions are drawn solid (the others dashed).
SOLID_POINT: Final = "high_specificity"

#: Series Number (0020,0011) of the heat-map series; high so that it sorts after acquisitions.
SC_SERIES_NUMBER: Final = 9901
SC_SERIES_DESCRIPTION: Final = "AI fracture heat maps - for review"
REVIEW_NOTICE: Final = "AI RESULT - FOR REVIEW BY A RADIOLOGIST"
POSITIVE_HEADLINE: Final = "FRACTURE SUSPECTED"
NEGATIVE_HEADLINE: Final = "NO FRACTURE DETECTED"


def headline(positive: bool) -> str:
    """The burned-in result for a positive or negative call."""
    return POSITIVE_HEADLINE if positive else NEGATIVE_HEADLINE


def banner_text(finding: ImageFinding, study: StudyFindings) -> BannerText:
    """What the banner of one image's heat map says (ASCII is enforced when drawing)."""
    point = study.operating_point
    algorithm = study.algorithm
    return BannerText(
        headline=headline(finding.positive),
        positive=finding.positive,
        lines=(
            REVIEW_NOTICE,
            f"Probability of fracture (this image): {finding.probability:.2f}",
            f"Study: {headline(study.study_positive)} (probability {study.study_probability:.2f})",
            f"Operating point: {point.name}, threshold {point.threshold:.2f}",
            *(
                ["Boxes: solid = high specificity, dashed = high sensitivity only"]
                if finding.regions
                else []
            ),
            f"Model: {algorithm.name} {algorithm.version}",
        ),
    )


def region_marks(finding: ImageFinding) -> list[RegionMark]:
    """The image's suspected fractures as outlines: solid at high specificity, else dashed."""
    return [
        RegionMark(
            x0=region.x0,
            y0=region.y0,
            x1=region.x1,
            y1=region.y1,
            label=f"{number}: {region.probability:.2f}",
            solid=SOLID_POINT in region.operating_points,
        )
        for number, region in enumerate(finding.regions, start=1)
    ]


def render_gradcam(finding: ImageFinding, study: StudyFindings) -> Rendering:
    """The heat-map picture of one image, as stored in its Secondary Capture."""
    return compose_gradcam(
        finding.display, finding.heatmap, banner_text(finding, study), region_marks(finding)
    )


@dataclass(frozen=True, slots=True)
class ResultLaterality:
    """Laterality of the SC: Image Laterality (0020,0062) and series Laterality (0020,0060).

    ``None`` means the attribute is absent; an empty ``series`` value means "unknown".
    """

    image: str | None
    series: str | None


def result_laterality(source: Dataset) -> ResultLaterality:
    """Laterality for the SC of ``source`` (PS3.3 C.7.3.1 General Series, C.7.6.1 General Image).

    When the source tells the side (Image Laterality R, L, B or U, else Laterality R or L), the
    SC states it as Image Laterality, image by image, as the source did; series Laterality is
    then absent, as PS3.3 requires it only when no Image Laterality is sent. When the source
    does not tell: no Laterality for an unpaired body part (``UNPAIRED_BODY_PARTS``), where it
    may not be present; otherwise an empty one, Type 2 for "unknown" on a paired or unnamed
    body part. A source's Laterality on an unpaired part (a pelvis marked R) thus becomes
    Image Laterality, which a validator accepts, instead of a series Laterality it refuses.
    """
    image = str(source.get("ImageLaterality") or "").strip().upper()
    if image in ("R", "L", "B", "U"):
        return ResultLaterality(image=image, series=None)
    series = str(source.get("Laterality") or "").strip().upper()
    if series in ("R", "L"):
        return ResultLaterality(image=series, series=None)
    if body_part_term(source) in UNPAIRED_BODY_PARTS:
        return ResultLaterality(image=None, series=None)
    return ResultLaterality(image=None, series="")


def _source_image_item(source: Dataset) -> Dataset:
    """Source Image Sequence item (PS3.3 C.7.6.1.1.4) for the analysed radiograph."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [CodedConcept.from_code(SOURCE_FOR_PROCESSING)]
    return item


def build_gradcam_sc(
    finding: ImageFinding,
    study: StudyFindings,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = SC_SERIES_NUMBER,
) -> Dataset:
    """Build the Secondary Capture showing one radiograph's Grad-CAM heat map and result.

    Parameters
    ----------
    finding
        The analysed image; must be one of ``study.images``.
    study
        The study's findings (operating point, algorithm and the study-level call).
    series_instance_uid, sop_instance_uid
        UIDs of the SC series and instance (see :mod:`reporting.uids`).
    instance_number, series_number
        Instance Number and Series Number of the SC.

    Returns
    -------
    pydicom.Dataset
        An SC Image (PS3.3 A.8.1, SOP Class 1.2.840.10008.5.1.4.1.1.7), RGB 8 bit, uncompressed,
        Burned In Annotation ``YES``, patient and study attributes copied from the source,
        Source Image Sequence referencing the source, preamble zeroed.

    Raises
    ------
    ResultInputError
        When ``finding`` is not part of ``study``.
    """
    if not any(finding is image for image in study.images):
        raise ResultInputError("the image finding is not one of the study's images")
    source = finding.source
    algorithm = study.algorithm
    rendering = render_gradcam(finding, study)

    sc = SCImage(
        pixel_array=rendering.rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        # Replaced below by the source's value (or emptied): the picture is only scaled and
        # padded, never flipped or rotated, so the source's orientation still holds.
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contributing_equipment=contributing_equipment(
            source, algorithm, "Fracture detection model that computed the heat map"
        ),
    )
    copy_patient_and_study(source, sc)
    mark_implementation(sc)
    sc.PatientOrientation = source.get("PatientOrientation")
    laterality = result_laterality(source)
    if laterality.series is not None:
        sc.Laterality = laterality.series
    elif "Laterality" in sc:
        del sc.Laterality
    if laterality.image is not None:
        sc.ImageLaterality = laterality.image
    if source.get("BodyPartExamined"):
        sc["BodyPartExamined"] = copy.deepcopy(source["BodyPartExamined"])
    sc.BurnedInAnnotation = "YES"
    sc.SourceImageSequence = [_source_image_item(source)]
    sc.DerivationDescription = (
        "Grad-CAM heat map of a fracture detection model blended over the source radiograph; "
        "result burned in"
    )
    sc.ImageComments = (
        f"{REVIEW_NOTICE}. {headline(finding.positive)}, "
        f"probability {finding.probability:.2f}, operating point "
        f"{study.operating_point.name} (threshold {study.operating_point.threshold:.2f}), "
        f"model {algorithm.name} {algorithm.version}"
    )
    apply_character_set(source, sc)
    return sc
