"""Operational statistics and the AI's agreement with reviewers, per model version and body part.

The reviewer's label is the truth; the AI's call is its study result at its operating point
when the review was given. Only each study's latest review counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.schemas import PerformanceRow, StatsOut, Turnaround
from db.models import JobState, Study, StudyPrediction
from db.review import FractureLabel, Review


@dataclass(frozen=True, slots=True)
class Confusion:
    """Counts of a binary test against the truth."""

    true_positives: int = 0
    false_positives: int = 0
    true_negatives: int = 0
    false_negatives: int = 0

    @property
    def total(self) -> int:
        return (
            self.true_positives + self.false_positives + self.true_negatives + self.false_negatives
        )

    @property
    def sensitivity(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)

    @property
    def specificity(self) -> float | None:
        return _ratio(self.true_negatives, self.true_negatives + self.false_positives)

    @property
    def ppv(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_positives)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def confusion(pairs: Iterable[tuple[bool, bool]]) -> Confusion:
    """Count ``(truth, predicted)`` pairs."""
    tp = fp = tn = fn = 0
    for truth, predicted in pairs:
        if predicted and truth:
            tp += 1
        elif predicted:
            fp += 1
        elif truth:
            fn += 1
        else:
            tn += 1
    return Confusion(tp, fp, tn, fn)


def percentiles(values: Sequence[float], quantiles: Sequence[float]) -> list[float | None]:
    """Linear-interpolated percentiles (0-100) of ``values``; None for an empty sequence."""
    if not values:
        return [None for _ in quantiles]
    found = np.percentile(np.asarray(values, dtype=np.float64), list(quantiles))
    return [float(v) for v in np.atleast_1d(found)]


def turnaround(session: Session) -> Turnaround:
    """Seconds from a study's first received instance to its first study result."""
    first_result = (
        select(StudyPrediction.study_id, func.min(StudyPrediction.created_at).label("at"))
        .group_by(StudyPrediction.study_id)
        .subquery()
    )
    rows = session.execute(
        select(Study.first_received_at, first_result.c.at).join(
            first_result, first_result.c.study_id == Study.id
        )
    )
    seconds: list[float] = []
    for received, result_at in rows:
        if result_at is None:
            continue
        if result_at.tzinfo is None:  # a raw aggregate on SQLite comes back naive (UTC)
            result_at = result_at.replace(tzinfo=UTC)
        seconds.append(max(0.0, (result_at - received).total_seconds()))
    p50, p95 = percentiles(seconds, (50, 95))
    return Turnaround(studies=len(seconds), p50_s=p50, p95_s=p95)


def performance(session: Session) -> list[PerformanceRow]:
    """Sensitivity, specificity and PPV per (model, version, body part) from latest reviews."""
    latest = select(func.max(Review.id).label("id")).group_by(Review.study_id).subquery()
    reviews = session.scalars(
        select(Review).join(latest, latest.c.id == Review.id).where(Review.ai_positive.is_not(None))
    )
    groups: dict[tuple[str | None, str | None, str | None], list[tuple[bool, bool]]] = defaultdict(
        list
    )
    for review in reviews:
        key = (review.model_name, review.model_version, review.body_part)
        truth = FractureLabel(review.label) is FractureLabel.FRACTURED
        groups[key].append((truth, bool(review.ai_positive)))
    rows: list[PerformanceRow] = []
    for (name, version, part), pairs in sorted(
        groups.items(), key=lambda item: tuple(v or "" for v in item[0])
    ):
        counts = confusion(pairs)
        rows.append(
            PerformanceRow(
                model_name=name,
                model_version=version,
                body_part=part,
                reviews=counts.total,
                true_positives=counts.true_positives,
                false_positives=counts.false_positives,
                true_negatives=counts.true_negatives,
                false_negatives=counts.false_negatives,
                sensitivity=counts.sensitivity,
                specificity=counts.specificity,
                ppv=counts.ppv,
            )
        )
    return rows


def study_results(session: Session) -> dict[str, int]:
    """Studies by their latest AI result: positive, negative, none."""
    latest = (
        select(func.max(StudyPrediction.id).label("id"))
        .group_by(StudyPrediction.study_id)
        .subquery()
    )
    counts = {"positive": 0, "negative": 0, "none": 0}
    for positive, n in session.execute(
        select(StudyPrediction.positive, func.count())
        .join(latest, latest.c.id == StudyPrediction.id)
        .group_by(StudyPrediction.positive)
    ):
        key = "none" if positive is None else ("positive" if positive else "negative")
        counts[key] += int(n)
    total = session.scalar(select(func.count()).select_from(Study)) or 0
    counts["none"] += int(total) - sum(counts.values())
    return counts


def collect(session: Session, jobs_by_state: dict[str, int]) -> StatsOut:
    """All the statistics of ``/api/stats``."""
    by_status = {
        str(status): int(n)
        for status, n in session.execute(select(Study.status, func.count()).group_by(Study.status))
    }
    return StatsOut(
        studies_by_status=by_status,
        results=study_results(session),
        jobs_by_state=jobs_by_state,
        queue_depth=jobs_by_state.get(JobState.PENDING.value, 0)
        + jobs_by_state.get(JobState.RUNNING.value, 0),
        turnaround=turnaround(session),
        reviews=int(session.scalar(select(func.count()).select_from(Review)) or 0),
        performance=performance(session),
    )
