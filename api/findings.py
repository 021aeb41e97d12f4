"""Per-finding feedback: a reader's verdict on one of the model's boxes, or a fracture it missed.

Each verdict is stored with a snapshot of the box it judged (coordinates, probability,
operating points, model), so it keeps its meaning after the study is analysed again; the
training export (:mod:`api.export`) writes them beside the reviewed images.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.schemas import Box, FindingFeedbackIn, FindingFeedbackOut
from db.models import ImagePrediction, Instance
from db.review import FindingFeedback, FindingVerdict, User


class FeedbackRejected(ValueError):  # noqa: N818 - reads as what happened
    """Feedback that does not fit the image; ``field`` names the offending part of the body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def latest_prediction_of(session: Session, instance_id: int) -> ImagePrediction | None:
    return session.scalars(
        select(ImagePrediction)
        .where(ImagePrediction.instance_id == instance_id)
        .order_by(ImagePrediction.id.desc())
        .limit(1)
    ).first()


def _region(prediction: ImagePrediction | None, index: int) -> dict[str, Any]:
    regions = (prediction.regions if prediction is not None else None) or []
    if index >= len(regions):
        raise FeedbackRejected(
            "region_index", f"the image's current result has {len(regions)} boxes, not {index + 1}"
        )
    return regions[index]


def create_feedback(
    session: Session,
    instance: Instance,
    reviewer_id: int,
    body: FindingFeedbackIn,
    size: tuple[int, int] | None,
) -> FindingFeedback:
    """Add feedback on ``instance`` to ``session`` (the caller commits).

    ``size`` is the image's ``(rows, columns)``, read before the write; a missed fracture's box
    must lie on the image.
    """
    prediction = latest_prediction_of(session, instance.id)
    model: tuple[str | None, str | None] = (None, None)
    if prediction is not None:
        model = (prediction.model_name, prediction.model_version)
    if body.verdict is FindingVerdict.MISSED:
        assert body.box is not None  # checked by FindingFeedbackIn
        if size is None:
            raise FeedbackRejected("box", "the image's size cannot be read")
        rows, columns = size
        if body.box.x1 > columns or body.box.y1 > rows:
            raise FeedbackRejected(
                "box", f"the box lies outside the image of {columns} x {rows} pixels"
            )
        box = body.box
        probability = None
        points: list[str] = []
    else:
        assert body.region_index is not None  # checked by FindingFeedbackIn
        region = _region(prediction, body.region_index)
        box = Box(x0=region["x0"], y0=region["y0"], x1=region["x1"], y1=region["y1"])
        probability = float(region["probability"])
        points = [str(point) for point in region.get("operating_points", [])]
    feedback = FindingFeedback(
        study_id=instance.study_id,
        instance_id=instance.id,
        reviewer_id=reviewer_id,
        verdict=body.verdict,
        image_prediction_id=prediction.id if prediction is not None else None,
        region_index=body.region_index,
        x0=box.x0,
        y0=box.y0,
        x1=box.x1,
        y1=box.y1,
        ai_probability=probability,
        operating_points=",".join(points) or None,
        model_name=model[0],
        model_version=model[1],
        comment=body.comment,
    )
    session.add(feedback)
    session.flush()
    return feedback


def feedback_out(feedback: FindingFeedback, reviewer: str) -> FindingFeedbackOut:
    return FindingFeedbackOut(
        id=feedback.id,
        image_id=feedback.instance_id,
        reviewer=reviewer,
        verdict=FindingVerdict(feedback.verdict),
        region_index=feedback.region_index,
        box=Box(x0=feedback.x0, y0=feedback.y0, x1=feedback.x1, y1=feedback.y1),
        ai_probability=feedback.ai_probability,
        operating_points=feedback.operating_points.split(",") if feedback.operating_points else [],
        model_name=feedback.model_name,
        model_version=feedback.model_version,
        comment=feedback.comment,
        created_at=feedback.created_at,
    )


def feedback_by_image(session: Session, study_id: int) -> dict[int, list[FindingFeedbackOut]]:
    """A study's finding feedback, by image id, oldest first."""
    found: dict[int, list[FindingFeedbackOut]] = defaultdict(list)
    for feedback, name in session.execute(
        select(FindingFeedback, User.username)
        .join(User, User.id == FindingFeedback.reviewer_id)
        .where(FindingFeedback.study_id == study_id)
        .order_by(FindingFeedback.created_at, FindingFeedback.id)
    ):
        found[feedback.instance_id].append(feedback_out(feedback, name))
    return found
