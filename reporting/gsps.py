"""The image's suspected fractures as a Grayscale Softcopy Presentation State (GSPS).

A GSPS (PS3.3 A.33.1) tells a viewer how to show an image it references: here the original
radiograph, with its own grey scale (the source's Modality LUT and first VOI window or VOI LUT,
and the Presentation LUT its Photometric Interpretation implies), plus the model's boxes as
graphic annotations that the reader can switch on and off in the PACS viewer, layer by layer:

- ``HIGH_SPECIFICITY``: the regions reported at the high-specificity operating point, solid;
- ``HIGH_SENSITIVITY``: the further regions reported only at the high-sensitivity point, dashed.

Each box carries a text annotation with its number and probability and the Tracking UID of its
TID 1410 group in the SR, so a viewer can tie the two together. The dashing and colours are in
the Line Style Sequence (PS3.3 C.10.5.1.2, Type 3): a viewer that ignores it still tells the
layers apart by their names, descriptions and recommended colours (C.10.7).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
from highdicom import PresentationLUTShapeValues, PresentationLUTTransformation
from highdicom.color import CIELabColor
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    SoftcopyVOILUTTransformation,
    TextObject,
)
from pydicom import Dataset
from pydicom.multival import MultiValue

from reporting.charset import apply_character_set
from reporting.codes import UNPAIRED_BODY_PARTS, body_part_term
from reporting.findings import FindingRegion, ImageFinding, ResultInputError, StudyFindings
from reporting.headers import (
    contributing_equipment,
    copy_patient_and_study,
    mark_implementation,
    neutral_header,
)
from reporting.sr import region_outline
from reporting.uids import tracking_uid

#: Series Number (0020,0011) of the presentation-state series (after the SR's and SCs').
GSPS_SERIES_NUMBER: Final = 9902
GSPS_SERIES_DESCRIPTION: Final = "AI fracture findings, toggleable - for review"
#: Content Label (0070,0080): what a viewer lists among an image's presentation states.
CONTENT_LABEL: Final = "AI_FRACTURES"
CONTENT_DESCRIPTION: Final = "AI suspected fractures - for review by a radiologist"

#: The operating point whose regions go into the solid layer.
HIGH_SPECIFICITY_POINT: Final = "high_specificity"

#: Line Thickness (0070,0253), in display pixels.
LINE_THICKNESS: Final = 2.0
#: Line Pattern (0070,0255) of dashed boxes: 8 pixels on, 8 off (bit 0 first, C.10.5.1.2).
DASH_PATTERN: Final = 0x00FF00FF
#: Text boxes are this fraction of the image's shorter side high (at least MIN_TEXT_HEIGHT).
TEXT_HEIGHT_FRACTION: Final = 0.035
MIN_TEXT_HEIGHT: Final = 12.0
#: Characters of text a bounding box is made wide enough for, at about 0.6 height per character.
TEXT_WIDTH_PER_HEIGHT: Final = 0.6

__all__ = [
    "CONTENT_LABEL",
    "GSPS_SERIES_NUMBER",
    "FindingLayer",
    "build_gsps",
    "layer_of",
    "region_text",
]

_WHITE = CIELabColor(100.0, 0.0, 0.0)
_BLACK = CIELabColor(0.0, 0.0, 0.0)


class FindingLayer(StrEnum):
    """The graphic layers (0070,0002) of the presentation state."""

    HIGH_SPECIFICITY = "HIGH_SPECIFICITY"
    HIGH_SENSITIVITY = "HIGH_SENSITIVITY"


@dataclass(frozen=True, slots=True)
class _LayerStyle:
    order: int
    description: str
    colour: CIELabColor
    grey: int
    dashed: bool


_LAYER_STYLES: Final = {
    # Drawn last, on top: the regions the model is surest of, in red, solid.
    FindingLayer.HIGH_SPECIFICITY: _LayerStyle(
        order=2,
        description="AI suspected fractures, high specificity (solid)",
        colour=CIELabColor(53.24, 80.09, 67.2),
        grey=0xFFFF,
        dashed=False,
    ),
    # The further regions reported only at the high-sensitivity point, in yellow, dashed.
    FindingLayer.HIGH_SENSITIVITY: _LayerStyle(
        order=1,
        description="AI further suspected fractures, high sensitivity only (dashed)",
        colour=CIELabColor(97.14, -21.55, 94.48),
        grey=0xC000,
        dashed=True,
    ),
}


def layer_of(region: FindingRegion) -> FindingLayer:
    """The layer a region is drawn in: high specificity if reported there, else high sensitivity.

    Regions at the high-specificity point are a subset of those at the high-sensitivity point
    (:mod:`inference.regions`), so each region is drawn once: switching both layers on shows
    every region at the high-sensitivity point, the solid layer alone the high-specificity ones.
    """
    if HIGH_SPECIFICITY_POINT in region.operating_points:
        return FindingLayer.HIGH_SPECIFICITY
    return FindingLayer.HIGH_SENSITIVITY


def region_text(number: int, region: FindingRegion) -> str:
    """The text shown beside a box (ASCII, any character set can hold it)."""
    return f"AI fracture {number}: {region.probability:.2f}"


def _line_style(style: _LayerStyle) -> Dataset:
    """One Line Style Sequence item (PS3.3 C.10.5.1.2): colour, thickness, solid or dashed."""
    item = Dataset()
    item.PatternOnColorCIELabValue = list(style.colour.value)
    item.PatternOnOpacity = 1.0
    item.LineThickness = LINE_THICKNESS
    item.LineDashingStyle = "DASHED" if style.dashed else "SOLID"
    if style.dashed:
        item.LinePattern = DASH_PATTERN
        item.PatternOffColorCIELabValue = list(_BLACK.value)
        item.PatternOffOpacity = 0.0
    item.ShadowStyle = "OFF"
    item.ShadowOffsetX = 0.0
    item.ShadowOffsetY = 0.0
    item.ShadowColorCIELabValue = list(_BLACK.value)
    item.ShadowOpacity = 0.0
    return item


def _text_box(region: FindingRegion, rows: int, columns: int) -> tuple[float, float, float, float]:
    """Where a box's text goes: just above it, or just below when it touches the top edge.

    Values are float32 (FL, PS3.5 6.2), so the object in memory equals the one read back.
    """
    height = max(MIN_TEXT_HEIGHT, TEXT_HEIGHT_FRACTION * min(rows, columns))
    width = max(region.x1 - region.x0, TEXT_WIDTH_PER_HEIGHT * height * 20)
    left = min(region.x0, max(0.0, columns - width))
    right = min(float(columns), left + width)
    if region.y0 >= height:
        top, bottom = region.y0 - height, region.y0
    else:
        bottom = min(float(rows), region.y1 + height)
        top = max(0.0, bottom - height)
    corners = np.array([left, top, right, bottom], dtype=np.float32)
    return (float(corners[0]), float(corners[1]), float(corners[2]), float(corners[3]))


def series_laterality(source: Dataset) -> str | None:
    """Laterality (0020,0060) of the presentation-state series; ``None`` means absent.

    A presentation state has no Image Laterality (no General Image module), so the side goes
    into the series' Laterality (PS3.3 C.7.3.1, Type 2C): R or L from the source's Image
    Laterality, else its Laterality; absent for an unpaired body part (``UNPAIRED_BODY_PARTS``),
    where it may not be present; otherwise empty, "unknown".
    """
    if body_part_term(source) in UNPAIRED_BODY_PARTS:
        return None
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in ("R", "L"):
            return value
    return ""


def _reference_image(source: Dataset) -> Dataset:
    """What the GSPS builder reads from the source: identity, grid, grey scale; no patient data.

    Patient and study attributes are blank here (:func:`neutral_header`) and copied exactly
    afterwards, so none of them passes through the builder's checks and messages.
    """
    reference = neutral_header(source)
    for keyword in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PixelSpacing",
        "ImagerPixelSpacing",
        "PixelAspectRatio",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
    ):
        if keyword in source:
            reference[keyword] = copy.deepcopy(source[keyword])
    if source.get("VOILUTSequence"):
        # The first VOI LUT, which the gateway applies too (inference.pixels.apply_voi).
        reference.VOILUTSequence = [copy.deepcopy(source.VOILUTSequence[0])]
    return reference


def _voi_transformations(source: Dataset) -> list[SoftcopyVOILUTTransformation] | None:
    """The source's first window, as the gateway applies it (``inference.pixels.apply_voi``).

    ``None`` when the source has a VOI LUT (the builder copies it from the reference image) or
    no valid window: then the presentation state has no Softcopy VOI LUT and a viewer applies
    no VOI transformation (PS3.4 N.2.1.1).
    """
    if source.get("VOILUTSequence"):
        return None  # copied by the builder from the reference image (_reference_image)
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    if center is None or width is None:
        return None
    first_center = float(center[0] if isinstance(center, MultiValue) else center)
    first_width = float(width[0] if isinstance(width, MultiValue) else width)
    if first_width < 1.0:
        return None  # an invalid window: the gateway ignores it too (inference.pixels)
    explanation = source.get("WindowCenterWidthExplanation")
    if isinstance(explanation, MultiValue):
        explanation = explanation[0] if explanation else None
    function = source.get("VOILUTFunction")
    return [
        SoftcopyVOILUTTransformation(
            window_center=first_center,
            window_width=first_width,
            window_explanation=str(explanation) if explanation else None,
            voi_lut_function=str(function) if function else None,
        )
    ]


def _presentation_lut(source: Dataset) -> PresentationLUTTransformation:
    """INVERSE for an image shown with its minimum white (MONOCHROME1, or an INVERSE shape).

    A presentation state replaces the image's Photometric Interpretation with its Presentation
    LUT (PS3.3 C.11.6.1.2, PS3.4 N.2.1.1): IDENTITY would show a MONOCHROME1 image negated.
    """
    photometric = str(source.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(source.get("PresentationLUTShape", "")).strip().upper()
    inverse = photometric == "MONOCHROME1" or shape == "INVERSE"
    return PresentationLUTTransformation(
        presentation_lut_shape=(
            PresentationLUTShapeValues.INVERSE if inverse else PresentationLUTShapeValues.IDENTITY
        )
    )


def _annotations(
    finding: ImageFinding, study: StudyFindings, reference: Dataset, layers: dict[str, GraphicLayer]
) -> list[GraphicAnnotation]:
    source = finding.source
    number = next(n for n, image in enumerate(study.images, start=1) if image is finding)
    rows, columns = int(source.Rows), int(source.Columns)
    algorithm = study.algorithm
    by_layer: dict[FindingLayer, tuple[list[GraphicObject], list[TextObject]]] = {}
    for index, region in enumerate(finding.regions, start=1):
        layer = layer_of(region)
        style = _LAYER_STYLES[layer]
        # The same Tracking UID as the region's TID 1410 group in the SR.
        tracking_id = f"Image {number} suspected fracture {index}"
        region_uid = tracking_uid(
            study.study_instance_uid,
            algorithm.name,
            algorithm.version,
            f"{source.SOPInstanceUID}/region{index}",
        )
        box = GraphicObject(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=region_outline(region),
            units=AnnotationUnitsValues.PIXEL,
            tracking_id=tracking_id,
            tracking_uid=region_uid,
        )
        box.LineStyleSequence = [_line_style(style)]
        text = TextObject(
            text_value=region_text(index, region),
            units=AnnotationUnitsValues.PIXEL,
            bounding_box=_text_box(region, rows, columns),
            text_justification="LEFT",
            tracking_id=tracking_id,
            tracking_uid=region_uid,
        )
        graphics, texts = by_layer.setdefault(layer, ([], []))
        graphics.append(box)
        texts.append(text)
    return [
        GraphicAnnotation(
            referenced_images=[reference],
            graphic_layer=layers[layer],
            graphic_objects=graphics,
            text_objects=texts,
        )
        for layer, (graphics, texts) in sorted(by_layer.items(), key=lambda item: item[0].value)
    ]


def build_gsps(
    finding: ImageFinding,
    study: StudyFindings,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = GSPS_SERIES_NUMBER,
) -> Dataset:
    """Build the presentation state that shows one radiograph with its suspected fractures.

    Parameters
    ----------
    finding
        The analysed image; must be one of ``study.images``. Its ``regions`` become the boxes.
    study
        The study's findings (algorithm; image numbers and Tracking UIDs as in the SR).
    series_instance_uid, sop_instance_uid
        UIDs of the presentation-state series and instance (see :mod:`reporting.uids`).
    instance_number, series_number
        Instance Number and Series Number of the presentation state.

    Returns
    -------
    pydicom.Dataset
        A Grayscale Softcopy Presentation State (PS3.3 A.33.1, SOP Class
        1.2.840.10008.5.1.4.1.1.11.1), Modality PR, referencing the source image; the two
        graphic layers of :class:`FindingLayer` (both declared, annotations in those that have
        regions); the source's Modality LUT and first VOI; Presentation LUT Shape INVERSE for
        MONOCHROME1 sources, else IDENTITY; patient and study attributes copied from the
        source, and its Specific Character Set as :mod:`reporting.charset` decides.

    Raises
    ------
    ResultInputError
        When ``finding`` is not part of ``study``, or the source is not single-sample grey.
    """
    if not any(finding is image for image in study.images):
        raise ResultInputError("the image finding is not one of the study's images")
    source = finding.source
    if int(source.get("SamplesPerPixel", 1)) != 1 or "NumberOfFrames" in source:
        raise ResultInputError("a grayscale presentation state needs a single-frame grey image")
    algorithm = study.algorithm
    reference = _reference_image(source)
    layers = {
        layer.value: GraphicLayer(
            layer_name=layer.value,
            order=style.order,
            description=style.description,
            display_color=style.colour,
        )
        for layer, style in _LAYER_STYLES.items()
    }
    for layer, style in _LAYER_STYLES.items():
        layers[layer.value].GraphicLayerRecommendedDisplayGrayscaleValue = style.grey
    annotations = _annotations(finding, study, reference, layers)

    gsps = GrayscaleSoftcopyPresentationState(
        referenced_images=[reference],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number="",
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        graphic_annotations=annotations or None,
        graphic_layers=sorted(layers.values(), key=lambda layer: int(layer.GraphicLayerOrder)),
        voi_lut_transformations=_voi_transformations(source),
        presentation_lut_transformation=_presentation_lut(source),
        contributing_equipment=contributing_equipment(
            source, algorithm, "Fracture detection model that found the regions"
        ),
        series_description=GSPS_SERIES_DESCRIPTION,
    )
    copy_patient_and_study(source, gsps)
    mark_implementation(gsps)
    laterality = series_laterality(source)
    if laterality is not None:
        gsps.Laterality = laterality
    elif "Laterality" in gsps:
        del gsps.Laterality
    if source.get("BodyPartExamined"):
        gsps["BodyPartExamined"] = copy.deepcopy(source["BodyPartExamined"])
    apply_character_set(source, gsps)
    return gsps
