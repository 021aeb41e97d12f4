"""Statistics, Prometheus metrics, the outbox admin routes and the append-only audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DatabaseError

from api.stats import confusion, percentiles
from db.base import utcnow
from db.models import Job, JobState
from db.results import OutboxEntry, OutboxState
from db.review import AuditEvent, AuditTrailImmutable
from tests.api.world import World, seed_study

pairs = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60)


@given(pairs)
def test_confusion_counts_and_ratios(values: list[tuple[bool, bool]]) -> None:
    counts = confusion(values)
    assert counts.total == len(values)
    positives = sum(truth for truth, _ in values)
    assert counts.true_positives + counts.false_negatives == positives
    for ratio in (counts.sensitivity, counts.specificity, counts.ppv):
        assert ratio is None or 0.0 <= ratio <= 1.0
    if positives:
        assert counts.sensitivity == sum(t and p for t, p in values) / positives
    else:
        assert counts.sensitivity is None


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50))
def test_percentiles_are_ordered_and_within_range(values: list[float]) -> None:
    p50, p95 = percentiles(values, (50, 95))
    assert p50 is not None
    assert p95 is not None
    assert min(values) <= p50 <= p95 <= max(values)


def test_percentiles_of_nothing() -> None:
    assert percentiles([], (50, 95)) == [None, None]


def test_stats(world: World, client: TestClient, radiologist: dict[str, str]) -> None:
    now = utcnow()
    true_positive = seed_study(
        world, probability=0.9, received_at=now, result_after=timedelta(seconds=10)
    )
    false_positive = seed_study(
        world, probability=0.7, received_at=now, result_after=timedelta(seconds=20)
    )
    true_negative = seed_study(world, probability=0.1, body_part="WRIST")
    seed_study(world, probability=None)
    for study, body in (
        (true_positive, {"verdict": "agree"}),
        (false_positive, {"verdict": "disagree", "label": "not_fractured"}),
        (true_negative, {"verdict": "agree"}),
    ):
        response = client.post(f"/api/studies/{study.id}/review", json=body, headers=radiologist)
        assert response.status_code == 201
    with world.sessions() as session, session.begin():
        session.add(Job(study_id=true_negative.id, generation=1, state=JobState.PENDING))
    stats = client.get("/api/stats", headers=radiologist).json()
    assert stats["studies_by_status"] == {"complete": 4}
    assert stats["results"] == {"positive": 2, "negative": 1, "none": 1}
    assert stats["jobs_by_state"]["pending"] == 1
    assert stats["queue_depth"] == 1
    assert stats["reviews"] == 3
    assert stats["turnaround"]["studies"] == 3
    assert 10 <= stats["turnaround"]["p50_s"] <= stats["turnaround"]["p95_s"] <= 30
    rows = {row["body_part"]: row for row in stats["performance"]}
    hand = rows["HAND"]
    assert (hand["true_positives"], hand["false_positives"]) == (1, 1)
    assert hand["ppv"] == 0.5
    assert hand["sensitivity"] == 1.0
    assert hand["specificity"] == 0.0
    assert hand["model_version"] == "1.2.3"
    assert rows["WRIST"]["specificity"] == 1.0
    assert rows["WRIST"]["sensitivity"] is None


def test_metrics_are_computed_from_the_database(world: World, client: TestClient) -> None:
    seed_study(world, n_images=2, deliveries=(OutboxState.SENT, OutboxState.DEAD_LETTER))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text_body = response.text
    assert 'fracture_gateway_instances_received_total{eligibility="eligible"} 2.0' in text_body
    assert 'fracture_gateway_jobs{state="done"} 1.0' in text_body
    assert "fracture_gateway_queue_depth 0.0" in text_body
    assert "fracture_gateway_inference_seconds_count 2.0" in text_body
    assert 'fracture_gateway_deliveries_total{state="dead_letter"} 1.0' in text_body
    assert 'fracture_gateway_failures_total{kind="delivery"} 1.0' in text_body


def test_metrics_give_the_age_of_the_oldest_due_item_per_queue(
    world: World, client: TestClient
) -> None:
    study = seed_study(world, probability=None)
    now = utcnow()
    with world.sessions() as session, session.begin():
        # due for two minutes, due for ten seconds, and backing off until later: 120 s
        for generation, due in (
            (1, now - timedelta(seconds=120)),
            (2, now - timedelta(seconds=10)),
        ):
            session.add(
                Job(
                    study_id=study.id,
                    generation=generation,
                    state=JobState.PENDING,
                    next_run_at=due,
                )
            )
        session.add(
            Job(
                study_id=study.id,
                generation=3,
                state=JobState.PENDING,
                next_run_at=now + timedelta(hours=1),
            )
        )
    text_body = client.get("/metrics").text
    ages = {
        line.split('queue="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text_body.splitlines()
        if line.startswith("fracture_gateway_queue_oldest_due_seconds{")
    }
    assert 120 <= ages["analysis"] < 180
    assert ages["delivery"] == 0.0


def test_health(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["model"]["state"] == "unavailable"


def test_outbox_list_and_retry(world: World, client: TestClient, admin: dict[str, str]) -> None:
    seed_study(world, deliveries=(OutboxState.SENT, OutboxState.DEAD_LETTER))
    page = client.get("/api/admin/outbox", headers=admin).json()
    assert page["total"] == 2
    dead = client.get("/api/admin/outbox?state=dead_letter", headers=admin).json()
    assert dead["total"] == 1
    row = dead["items"][0]
    assert row["last_error"] == "association rejected"
    retried = client.post(f"/api/admin/outbox/{row['id']}/retry", headers=admin)
    assert retried.status_code == 200
    assert retried.json() == {"id": row["id"], "state": "pending"}
    assert client.post(f"/api/admin/outbox/{row['id']}/retry", headers=admin).status_code == 409
    assert client.post("/api/admin/outbox/9999/retry", headers=admin).status_code == 404
    with world.sessions() as session:
        entry = session.get(OutboxEntry, row["id"])
        assert entry is not None
        assert entry.state == OutboxState.PENDING
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.event_id_code == "110102")
        ).all()
    assert [e.outcome for e in events] == [0, 4, 4]


def test_audit_query_filters(world: World, client: TestClient, admin: dict[str, str]) -> None:
    client.post("/api/auth/login", data={"username": "boss", "password": "wrong-password"})
    everything = client.get("/api/admin/audit", headers=admin).json()
    assert everything["total"] >= 3
    failures = client.get("/api/admin/audit?event_id=110114&outcome=4", headers=admin).json()
    assert failures["total"] == 1
    assert failures["items"][0]["event_id_meaning"] == "User Authentication"
    mine = client.get("/api/admin/audit?actor=user:boss&action=R", headers=admin).json()
    assert {item["event_id_code"] for item in mine["items"]} == {"110101"}
    future = (utcnow() + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert client.get(f"/api/admin/audit?since={future}", headers=admin).json()["total"] == 0
    assert client.get("/api/admin/audit?event_id=abc", headers=admin).status_code == 422
    assert client.get("/api/admin/audit?outcome=3", headers=admin).status_code == 422


def test_audit_trail_is_append_only(
    world: World, client: TestClient, admin: dict[str, str]
) -> None:
    with world.sessions() as session:
        event = session.scalars(select(AuditEvent)).first()
        assert event is not None
        event.detail = "changed"
        with pytest.raises(AuditTrailImmutable):
            session.commit()
        session.rollback()
        session.delete(event)
        with pytest.raises(AuditTrailImmutable):
            session.commit()
        session.rollback()
        with pytest.raises(AuditTrailImmutable):
            session.execute(update(AuditEvent).values(detail="x"))
        session.rollback()
        with pytest.raises(AuditTrailImmutable):
            session.execute(delete(AuditEvent))
        session.rollback()
    with world.engine.connect() as connection:  # below the ORM, the database refuses too
        with pytest.raises(DatabaseError, match="append-only"):
            connection.execute(text("UPDATE audit_events SET detail = 'x'"))
        connection.rollback()
        with pytest.raises(DatabaseError, match="append-only"):
            connection.execute(text("DELETE FROM audit_events"))
