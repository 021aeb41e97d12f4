"""Request and response bodies: every route declares one, so the OpenAPI schema is complete."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from db.review import AuditAction, FindingVerdict, FractureLabel, Role, Verdict
from dicom_node.identity import ConflictDecision as IdentityDecision

_ORM = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    """Every refusal other than a validation error: a short message without patient data."""

    detail: str


#: Documented refusals, added to the routes that can answer them.
AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "Missing, invalid or expired credentials"},
}
ADMIN_RESPONSES: dict[int | str, dict[str, object]] = {
    **AUTH_RESPONSES,
    403: {"model": ErrorBody, "description": "The admin role is needed"},
}
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "No such object"},
}


# Auth -------------------------------------------------------------------------------------------
class AccessTokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 type
    expires_at: datetime


class MeOut(BaseModel):
    kind: Literal["user", "token"]
    name: str
    role: Role


# Studies ----------------------------------------------------------------------------------------
class StudyResultOut(BaseModel):
    """A study-level AI result and the operating point it was read at."""

    model_config = _ORM

    id: int
    probability: float | None
    positive: bool | None
    operating_point: str
    threshold: float
    positive_high_specificity: bool | None
    #: Positive at the high-sensitivity point: some analysed image reached its threshold.
    positive_high_sensitivity: bool | None = None
    model_name: str
    model_version: str
    n_images: int
    created_at: datetime


class ReviewSummary(BaseModel):
    id: int
    verdict: Verdict
    label: FractureLabel
    reviewer: str
    created_at: datetime


class WorklistItem(BaseModel):
    id: int
    url: str
    status: str
    patient_name: str | None
    patient_id: str | None
    patient_sex: str | None
    patient_age: str | None = Field(
        description="Patient's Age (an Age String such as 045Y), else the age in years at the "
        "study date from the birth date"
    )
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    body_parts: list[str]
    modalities: list[str]
    n_images: int
    first_received_at: datetime
    last_received_at: datetime
    result: StudyResultOut | None
    turnaround_s: float | None = Field(
        description="Seconds from the first received image to the first AI result"
    )
    not_applicable_reason: str | None = Field(
        description="Why the study has no fracture probability (no image the model covers)"
    )
    reviewed: bool
    latest_review: ReviewSummary | None
    identity_conflict: bool = Field(
        description="An image names another patient than the study: analysis and delivery "
        "are held until an admin resolves it"
    )


class Worklist(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[WorklistItem]


class WorklistVersion(BaseModel):
    """A fingerprint of everything the worklist shows: it changes when any row would."""

    version: str


class RegionOut(BaseModel):
    """A suspected fracture: a box in the image's pixel coordinates (x along columns)."""

    x0: float
    y0: float
    x1: float
    y1: float
    probability: float
    operating_points: list[str]


class ImageResultOut(BaseModel):
    model_config = _ORM

    id: int
    probability: float
    positive_high_sensitivity: bool
    positive_high_specificity: bool
    peak_x: float | None
    peak_y: float | None
    #: Suspected fracture regions, strongest first (null for a model without localisation).
    regions: list[RegionOut] | None = None
    model_name: str
    model_version: str
    inference_ms: float | None
    created_at: datetime


class Box(BaseModel):
    """A rectangle on an image in original pixel coordinates (x along columns)."""

    x0: float = Field(ge=0, allow_inf_nan=False)
    y0: float = Field(ge=0, allow_inf_nan=False)
    x1: float = Field(ge=0, allow_inf_nan=False)
    y1: float = Field(ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError("a box needs x0 < x1 and y0 < y1")
        return self


class FindingFeedbackIn(BaseModel):
    """A verdict on one of the image's boxes (``region_index``), or a box the model missed."""

    model_config = ConfigDict(extra="forbid")

    verdict: FindingVerdict
    region_index: int | None = Field(
        None, ge=0, le=255, description="The box's position in the image result's regions"
    )
    box: Box | None = Field(None, description="Where the missed fracture is (missed only)")
    comment: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _what_is_judged(self) -> FindingFeedbackIn:
        if self.verdict is FindingVerdict.MISSED:
            if self.box is None or self.region_index is not None:
                raise ValueError("a missed fracture needs a box and no region_index")
        elif self.region_index is None or self.box is not None:
            raise ValueError("a verdict on a box needs its region_index and no box")
        return self


class FindingFeedbackOut(BaseModel):
    id: int
    image_id: int
    reviewer: str
    verdict: FindingVerdict
    region_index: int | None
    box: Box
    ai_probability: float | None
    operating_points: list[str]
    model_name: str | None
    model_version: str | None
    comment: str | None
    created_at: datetime


class ImageOut(BaseModel):
    id: int
    series_id: int
    instance_number: int | None
    modality: str | None
    body_part: str | None
    eligibility: str
    eligibility_reason: str | None
    rows: int | None
    columns: int | None
    received_at: datetime
    result: ImageResultOut | None
    preview_url: str
    heatmap_url: str | None
    pixels_url: str
    #: Readers' verdicts on this image's boxes and the fractures they drew, oldest first.
    feedback: list[FindingFeedbackOut] = []


class DeliveryOut(BaseModel):
    model_config = _ORM

    id: int
    destination: str
    state: str
    attempts: int
    last_status: int | None
    sent_at: datetime | None
    updated_at: datetime


class ResultObjectOut(BaseModel):
    id: int
    kind: str
    model_name: str
    model_version: str
    source_image_id: int | None
    created_at: datetime
    deliveries: list[DeliveryOut]


class Point(BaseModel):
    """A point on an image in original pixel coordinates (column ``x``, row ``y``)."""

    x: float = Field(ge=0, allow_inf_nan=False)
    y: float = Field(ge=0, allow_inf_nan=False)


class ReviewOut(BaseModel):
    id: int
    reviewer: str
    verdict: Verdict
    label: FractureLabel
    image_id: int | None
    location: Point | None
    comment: str | None
    study_result_id: int | None
    ai_probability: float | None
    ai_positive: bool | None
    model_name: str | None
    model_version: str | None
    created_at: datetime


class StudyDetail(WorklistItem):
    images: list[ImageOut]
    results: list[StudyResultOut]
    result_objects: list[ResultObjectOut]
    reviews: list[ReviewOut]


class ReviewIn(BaseModel):
    """A verdict on the study's current AI result.

    ``agree`` takes the AI's label (a ``label``, if given, must match it); ``disagree`` needs
    the corrected ``label``. A ``location`` needs the ``image_id`` it lies on.
    """

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    label: FractureLabel | None = None
    image_id: int | None = None
    location: Point | None = None
    comment: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _location_needs_image(self) -> ReviewIn:
        if self.location is not None and self.image_id is None:
            raise ValueError("a location needs the image_id of the image it lies on")
        if self.verdict is Verdict.DISAGREE and self.label is None:
            raise ValueError("a disagreeing review needs the corrected label")
        return self


# Stats ------------------------------------------------------------------------------------------
class Turnaround(BaseModel):
    """Seconds from the first received instance to the study's first result."""

    studies: int
    p50_s: float | None
    p95_s: float | None


class PerformanceRow(BaseModel):
    """Agreement of the AI (positive at its operating point) with reviewers' labels."""

    model_name: str | None
    model_version: str | None
    body_part: str | None
    reviews: int
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int
    sensitivity: float | None
    specificity: float | None
    ppv: float | None


class StatsOut(BaseModel):
    studies_by_status: dict[str, int]
    results: dict[str, int]
    jobs_by_state: dict[str, int]
    queue_depth: int
    turnaround: Turnaround
    reviews: int
    performance: list[PerformanceRow]


# Admin ------------------------------------------------------------------------------------------
class OutboxRowOut(BaseModel):
    id: int
    study_id: int
    result_object_id: int
    kind: str
    destination: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime


class OutboxPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[OutboxRowOut]


class IdentityConflictResolveIn(BaseModel):
    decision: IdentityDecision = Field(
        description="keep_study_identity: the study keeps its identity; the images that name "
        "another patient stay stored but are excluded from analysis for good"
    )


class IdentityConflictResolveOut(BaseModel):
    study_id: int
    decision: IdentityDecision
    excluded_image_ids: list[int]


class RetryOut(BaseModel):
    id: int
    state: str


class LoginThrottleOut(BaseModel):
    """A user name or client address with failed logins: its delay window or lock."""

    model_config = _ORM

    id: int
    scope: str = Field(description="user (the submitted user name) or address (the client's)")
    key: str
    failures: int
    last_failure_at: datetime | None
    blocked_until: datetime | None = Field(description="logins before this get 429")
    locked_at: datetime | None = Field(description="set: logins get 423 until an admin lifts it")


class LoginThrottlePage(BaseModel):
    items: list[LoginThrottleOut]


class AuditEventOut(BaseModel):
    model_config = _ORM

    id: int
    occurred_at: datetime
    event_id_code: str
    event_id_meaning: str
    event_type_code: str | None
    event_type_meaning: str | None
    action: AuditAction
    outcome: int
    actor: str
    user_id: int | None
    client_ip: str | None
    object_type: str | None
    object_id: str | None
    detail: str | None
    #: Participant objects of a DICOM network event (admins only; see docs/SECURITY.md).
    study_instance_uid: str | None = None
    patient_id: str | None = None
    instance_count: int | None = None


class AuditPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[AuditEventOut]


# Predict and system -----------------------------------------------------------------------------
class PredictOut(BaseModel):
    """The one-image result; nothing is kept unless ``stored`` says so."""

    source: Literal["dicom", "picture"]
    probability: float
    positive: bool
    operating_point: str
    threshold: float
    labels: dict[str, bool]
    model_name: str
    model_version: str
    width: int
    height: int
    peak: Point | None
    #: Suspected fracture regions on the uploaded image, strongest first.
    regions: list[RegionOut]
    truncated: bool
    heatmap_png_base64: str | None
    stored: bool
    study_id: int | None


class OperatingPointOut(BaseModel):
    """A threshold on the probability and what it reached on the validation data."""

    name: str
    threshold: float
    sensitivity: float
    specificity: float


class ModelCardOut(BaseModel):
    """What the reader needs to know about the configured model (read from its card)."""

    name: str
    version: str
    operating_point: str = Field(description="The point a study's AI result is read at")
    operating_points: list[OperatingPointOut]
    body_parts: list[str]


class ModelStatusOut(BaseModel):
    state: str
    name: str | None
    version: str | None
    reason: str | None


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    model: ModelStatusOut
