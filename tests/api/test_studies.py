"""The worklist, the study view, its pictures and reviews."""

from __future__ import annotations

import io
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.app import create_app
from api.reviews import review_for_key
from db.base import utcnow
from db.models import StudyStatus
from db.results import OutboxState
from db.review import AuditEvent, FractureLabel, Review, Role, User, Verdict
from tests.api.conftest import login
from tests.api.world import World, add_user, seed_study


def _ids(response_json: dict[str, object]) -> list[int]:
    return [item["id"] for item in response_json["items"]]  # type: ignore[attr-defined, index]


def test_worklist_priority_order_and_pagination(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    negative = seed_study(world, probability=0.2)
    weak = seed_study(world, probability=0.6)
    none = seed_study(world, probability=None, status=StudyStatus.RECEIVING)
    strong = seed_study(world, probability=0.95)
    body = client.get("/api/studies", headers=radiologist).json()
    assert body["total"] == 4
    assert _ids(body) == [strong.id, weak.id, negative.id, none.id]
    assert body["items"][0]["url"] == f"/api/studies/{strong.id}"
    assert body["items"][0]["result"]["positive"] is True
    assert body["items"][3]["result"] is None
    page = client.get("/api/studies?limit=2&offset=1", headers=radiologist).json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    assert _ids(page) == [weak.id, negative.id]


def test_worklist_filters(world: World, client: TestClient, radiologist: dict[str, str]) -> None:
    hand = seed_study(world, probability=0.9, body_part="HAND")
    wrist = seed_study(world, probability=0.3, body_part="WRIST")
    old = seed_study(
        world, probability=None, body_part="HAND", received_at=utcnow() - timedelta(days=10)
    )

    def ids(query: str) -> list[int]:
        response = client.get(f"/api/studies?{query}", headers=radiologist)
        assert response.status_code == 200, response.text
        return sorted(_ids(response.json()))

    assert ids("result=positive") == [hand.id]
    assert ids("result=negative") == [wrist.id]
    assert ids("result=none") == [old.id]
    assert ids("body_part=hand") == sorted([hand.id, old.id])
    assert ids("min_probability=0.5") == [hand.id]
    assert ids("max_probability=0.5") == [wrist.id]
    assert ids("status=complete") == sorted([hand.id, wrist.id, old.id])
    since = (utcnow() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"received_from={since}") == sorted([hand.id, wrist.id])
    assert ids("study_date_from=2024-01-05&study_date_to=2024-01-05") == sorted(
        [hand.id, wrist.id, old.id]
    )
    assert ids("study_date_from=2024-02-01") == []
    client.post(f"/api/studies/{hand.id}/review", json={"verdict": "agree"}, headers=radiologist)
    assert ids("reviewed=true") == [hand.id]
    assert ids("reviewed=false") == sorted([wrist.id, old.id])


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=100000",
        "offset=-1",
        "min_probability=2",
        "result=maybe",
        "status=lost",
        "received_from=2024-01-01T00:00:00",
        "study_date_from=yesterday",
    ],
)
def test_worklist_bad_filters_are_422(
    client: TestClient, radiologist: dict[str, str], query: str
) -> None:
    response = client.get(f"/api/studies?{query}", headers=radiologist)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]


def test_study_detail(world: World, client: TestClient, radiologist: dict[str, str]) -> None:
    study = seed_study(world, n_images=2, deliveries=(OutboxState.SENT, OutboxState.DEAD_LETTER))
    response = client.get(f"/api/studies/{study.id}", headers=radiologist)
    assert response.status_code == 200
    body = response.json()
    assert [image["id"] for image in body["images"]] == study.image_ids
    image = body["images"][0]
    assert (image["rows"], image["columns"]) == (study.rows, study.columns)
    assert image["result"]["probability"] == pytest.approx(0.8)
    [region] = image["result"]["regions"]
    assert (region["x0"], region["y0"], region["x1"], region["y1"]) == (60.0, 35.0, 80.0, 55.0)
    assert region["operating_points"] == ["high_sensitivity"]
    assert image["preview_url"] == f"/api/studies/{study.id}/images/{image['id']}/preview.png"
    assert image["heatmap_url"].endswith("/heatmap.png")
    assert body["result"]["operating_point"] == "high_sensitivity"
    assert body["result"]["threshold"] == 0.5
    assert body["result"]["model_version"] == "1.2.3"
    assert [o["kind"] for o in body["result_objects"]] == ["sr", "sc"]
    states = [o["deliveries"][0]["state"] for o in body["result_objects"]]
    assert states == ["sent", "dead_letter"]
    with world.sessions() as session:
        read = session.scalars(select(AuditEvent).where(AuditEvent.event_id_code == "110110")).all()
    assert [(e.action, e.object_type, e.object_id) for e in read] == [("R", "study", str(study.id))]


def test_unknown_ids_are_404(world: World, client: TestClient, radiologist: dict[str, str]) -> None:
    study = seed_study(world)
    other = seed_study(world)
    assert client.get("/api/studies/999", headers=radiologist).status_code == 404
    wrong_study = f"/api/studies/{other.id}/images/{study.image_ids[0]}/preview.png"
    assert client.get(wrong_study, headers=radiologist).status_code == 404
    assert client.get("/api/studies/abc", headers=radiologist).status_code == 422
    review = client.post("/api/studies/999/review", json={"verdict": "agree"}, headers=radiologist)
    assert review.status_code == 404


def _png(response_content: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(response_content)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_preview_and_heatmap_pictures(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world)
    base = f"/api/studies/{study.id}/images/{study.image_ids[0]}"
    preview = client.get(f"{base}/preview.png", headers=radiologist)
    assert preview.status_code == 200
    assert preview.headers["content-type"] == "image/png"
    assert preview.headers["cache-control"] == "no-store"
    grey = _png(preview.content)
    assert grey.shape == (study.rows, study.columns, 3)
    assert (grey[..., 0] == grey[..., 1]).all()  # grey: no colour
    assert grey[study.rows // 2, study.columns * 5 // 12, 0] > grey[5, 5, 0]  # bone is bright
    heat = _png(client.get(f"{base}/heatmap.png", headers=radiologist).content)
    assert heat.shape == grey.shape
    assert (heat != grey).any(axis=2).sum() > 0  # the hot spot is drawn in colour
    small = _png(client.get(f"{base}/preview.png?max_size=64", headers=radiologist).content)
    assert max(small.shape[:2]) == 64
    assert client.get(f"{base}/preview.png?max_size=1", headers=radiologist).status_code == 422


def test_heatmap_of_an_image_without_result_is_404(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=None)
    base = f"/api/studies/{study.id}/images/{study.image_ids[0]}"
    assert client.get(f"{base}/preview.png", headers=radiologist).status_code == 200
    assert client.get(f"{base}/heatmap.png", headers=radiologist).status_code == 404


def test_missing_stored_file_is_409_not_500(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world)
    with world.sessions() as session:
        from db.models import Instance

        instance = session.get(Instance, study.image_ids[0])
        assert instance is not None
        world.store.absolute(instance.storage_path).unlink()
    base = f"/api/studies/{study.id}/images/{study.image_ids[0]}"
    response = client.get(f"{base}/preview.png", headers=radiologist)
    assert response.status_code == 409
    assert "cannot be read" in response.json()["detail"]


def test_review_is_stored_with_reviewer_time_and_model(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=0.2)
    image_id = study.image_ids[0]
    response = client.post(
        f"/api/studies/{study.id}/review",
        json={
            "verdict": "disagree",
            "label": "fractured",
            "image_id": image_id,
            "location": {"x": 10.5, "y": 20},
            "comment": "subtle scaphoid fracture",
        },
        headers=radiologist,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["reviewer"] == "rad"
    assert body["label"] == "fractured"
    assert body["model_version"] == "1.2.3"
    assert response.headers["location"].startswith(f"/api/studies/{study.id}")
    with world.sessions() as session:
        review = session.scalars(select(Review)).one()
        assert (review.location_x, review.location_y) == (10.5, 20.0)
        assert review.ai_positive is False
        assert review.body_part == "HAND"
        assert review.study_prediction_id == study.prediction_id
        assert review.created_at is not None
    detail = client.get(f"/api/studies/{study.id}", headers=radiologist).json()
    assert detail["reviewed"] is True
    assert detail["reviews"][0]["location"] == {"x": 10.5, "y": 20.0}
    assert detail["latest_review"]["verdict"] == "disagree"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"verdict": "agree", "label": "not_fractured"}, "label"),
        ({"verdict": "disagree", "label": "fractured"}, "label"),
        ({"verdict": "disagree"}, None),
        ({"verdict": "agree", "location": {"x": 1, "y": 1}}, None),
        ({"verdict": "agree", "image_id": "IMAGE", "location": {"x": 128, "y": 1}}, "location"),
        ({"verdict": "agree", "image_id": "IMAGE", "location": {"x": 1, "y": 96}}, "location"),
        ({"verdict": "agree", "image_id": "IMAGE", "location": {"x": -1, "y": 1}}, None),
        ({"verdict": "agree", "image_id": 999_999}, "image_id"),
        (
            {
                "verdict": "disagree",
                "label": "not_fractured",
                "image_id": "IMAGE",
                "location": {"x": 10, "y": 20},
            },
            "location",
        ),
        ({"verdict": "maybe"}, None),
        ({"verdict": "agree", "extra": 1}, None),
        ({"verdict": "agree", "comment": "x" * 2001}, None),
    ],
)
def test_bad_reviews_are_422(
    world: World,
    client: TestClient,
    radiologist: dict[str, str],
    body: dict[str, object],
    field: str | None,
) -> None:
    study = seed_study(world, probability=0.8)
    payload = {k: (study.image_ids[0] if v == "IMAGE" else v) for k, v in body.items()}
    response = client.post(f"/api/studies/{study.id}/review", json=payload, headers=radiologist)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["msg"]
    if field is not None:
        assert detail[0]["loc"] == ["body", field]
    with world.sessions() as session:
        assert session.scalars(select(Review)).all() == []


def test_agree_needs_an_ai_result(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=None)
    agree = client.post(
        f"/api/studies/{study.id}/review", json={"verdict": "agree"}, headers=radiologist
    )
    assert agree.status_code == 422
    labelled = client.post(
        f"/api/studies/{study.id}/review",
        json={"verdict": "disagree", "label": "fractured"},
        headers=radiologist,
    )
    assert labelled.status_code == 201
    assert labelled.json()["ai_positive"] is None


NAME_IN_COMMENT = "Comment names SMITH^JOHN"


@pytest.mark.parametrize(
    ("probability", "body"),
    [
        (0.8, {"verdict": "disagree", "label": "not_fractured"}),
        (0.2, {"verdict": "agree"}),
        (None, {"verdict": "disagree", "label": "not_fractured"}),
    ],
)
def test_no_fracture_with_a_fracture_location_is_refused(
    world: World,
    client: TestClient,
    radiologist: dict[str, str],
    probability: float | None,
    body: dict[str, object],
) -> None:
    """A marked fracture never goes with the label not_fractured, whichever verdict makes it."""
    study = seed_study(world, probability=probability)
    payload = {
        **body,
        "image_id": study.image_ids[0],
        "location": {"x": 12.25, "y": 34.75},
        "comment": NAME_IN_COMMENT,
    }
    response = client.post(f"/api/studies/{study.id}/review", json=payload, headers=radiologist)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "location"]
    assert "fracture location goes only with the label fractured" in detail[0]["msg"]
    for echoed in ("SMITH", "12.25", "34.75"):
        assert echoed not in response.text
    with world.sessions() as session:
        assert session.scalars(select(Review)).all() == []


@pytest.mark.parametrize(
    "payload",
    [
        {"verdict": "agree", "comment": NAME_IN_COMMENT + "x" * 2000},
        {"verdict": "maybe", "comment": NAME_IN_COMMENT},
        {"verdict": "agree", "location": {"x": 1, "y": 1}, "comment": NAME_IN_COMMENT},
        {"verdict": "agree", "comment": NAME_IN_COMMENT, "SMITH^JOHN": 1},
    ],
)
def test_validation_errors_do_not_echo_the_request(
    world: World, client: TestClient, radiologist: dict[str, str], payload: dict[str, object]
) -> None:
    """FastAPI's 422 normally carries the submitted ``input``; a comment may name a patient."""
    study = seed_study(world)
    response = client.post(f"/api/studies/{study.id}/review", json=payload, headers=radiologist)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["msg"]
    assert all(set(error) == {"loc", "msg", "type"} for error in detail)
    assert "JOHN" not in json.dumps([e["msg"] for e in detail] + [e["type"] for e in detail])
    assert '"input"' not in response.text
    assert "comment names" not in response.text.lower()


def _review(
    client: TestClient, study_id: int, headers: dict[str, str], key: str, **body: object
) -> Response:
    return client.post(
        f"/api/studies/{study_id}/review",
        json={"verdict": "agree", **body},
        headers={**headers, "Idempotency-Key": key},
    )


def test_a_repeated_review_request_stores_one_review(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=0.8)
    key = str(uuid.uuid4())
    first = _review(client, study.id, radiologist, key, comment="double click")
    again = _review(client, study.id, radiologist, key, comment="double click")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    with world.sessions() as session:
        assert len(session.scalars(select(Review)).all()) == 1
        created = session.scalars(
            select(AuditEvent).where(AuditEvent.object_type == "review", AuditEvent.action == "C")
        ).all()
    assert len(created) == 1
    other = _review(client, study.id, radiologist, str(uuid.uuid4()), comment="double click")
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]


def test_a_reused_key_for_another_review_is_409_without_echo(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=0.8)
    other_study = seed_study(world, probability=0.8)
    key = str(uuid.uuid4())
    assert _review(client, study.id, radiologist, key).status_code == 201
    changed = _review(client, study.id, radiologist, key, comment=NAME_IN_COMMENT)
    elsewhere = _review(client, other_study.id, radiologist, key)
    for response in (changed, elsewhere):
        assert response.status_code == 409
        assert response.json() == {
            "detail": "this Idempotency-Key was already used for a different review; "
            "send a new key for a new review"
        }
    assert "SMITH" not in changed.text
    with world.sessions() as session:
        assert len(session.scalars(select(Review)).all()) == 1


def test_keys_belong_to_their_reviewer(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=0.8)
    add_user(world, "second", Role.RADIOLOGIST)
    second = login(client, "second")
    key = str(uuid.uuid4())
    mine = _review(client, study.id, radiologist, key)
    theirs = _review(client, study.id, second, key)
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert theirs.json()["reviewer"] == "second"
    assert "idempotent-replayed" not in theirs.headers


@pytest.mark.parametrize("key", ["short", "x" * 65, "not a key!", "<script>"])
def test_malformed_idempotency_keys_are_422(
    world: World, client: TestClient, radiologist: dict[str, str], key: str
) -> None:
    study = seed_study(world, probability=0.8)
    response = _review(client, study.id, radiologist, key)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert key not in response.text


def test_the_database_keeps_one_review_per_reviewer_and_key(
    world: World, radiologist: dict[str, str]
) -> None:
    """The unique constraint, not the route's look-up, is what holds across API workers."""
    study = seed_study(world, probability=0.8)
    with world.sessions() as session:
        reviewer_id = session.scalars(select(User.id).where(User.username == "rad")).one()

    def add(key: str | None) -> None:
        with world.sessions() as session, session.begin():
            session.add(
                Review(
                    study_id=study.id,
                    reviewer_id=reviewer_id,
                    verdict=Verdict.AGREE,
                    label=FractureLabel.FRACTURED,
                    idempotency_key=key,
                )
            )

    add("same-key-0001")
    with pytest.raises(IntegrityError):
        add("same-key-0001")
    add(None)
    add(None)  # requests without a key are not deduplicated


def test_concurrent_repeats_store_one_review(world: World, radiologist: dict[str, str]) -> None:
    """Several copies of one request at once (two API workers on one database) store one."""
    study = seed_study(world, probability=0.8)
    key = str(uuid.uuid4())
    apps = [create_app(world.settings, world.sessions, store=world.store) for _ in range(2)]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        clients = [first, second] * 3
        start = threading.Barrier(len(clients))

        def send(client: TestClient) -> Response:
            start.wait()
            return _review(client, study.id, radiologist, key, comment="race")

        with ThreadPoolExecutor(len(clients)) as pool:
            responses = list(pool.map(send, clients))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == len(clients) - 1
    with world.sessions() as session:
        assert len(session.scalars(select(Review)).all()) == 1


def test_a_lost_race_answers_the_review_the_other_worker_stored(
    world: World,
    client: TestClient,
    radiologist: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The look-up misses a review another worker commits just after it: the insert then hits
    the unique constraint, and the route answers the stored review rather than a 500."""
    from api.routes import studies as routes

    study = seed_study(world, probability=0.8)
    key = str(uuid.uuid4())
    first = _review(client, study.id, radiologist, key, comment="race")
    assert first.status_code == 201
    lookups: list[str] = []

    def too_early(session: Session, reviewer_id: int, key: str) -> Review | None:
        lookups.append(key)
        return None if len(lookups) == 1 else review_for_key(session, reviewer_id, key)

    monkeypatch.setattr(routes, "review_for_key", too_early)
    again = _review(client, study.id, radiologist, key, comment="race")
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len(lookups) == 2
    changed = _review(client, study.id, radiologist, key, comment="another")
    assert changed.status_code == 409
    with world.sessions() as session:
        assert len(session.scalars(select(Review)).all()) == 1


def test_study_detail_lists_every_review_newest_first(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=0.8)
    add_user(world, "second", Role.RADIOLOGIST)
    second = login(client, "second")
    assert _review(client, study.id, radiologist, str(uuid.uuid4()), comment="first").is_success
    later = _review(
        client,
        study.id,
        second,
        str(uuid.uuid4()),
        comment="second look",
        image_id=study.image_ids[0],
        location={"x": 40, "y": 50},
    )
    assert later.status_code == 201
    reviews = client.get(f"/api/studies/{study.id}", headers=radiologist).json()["reviews"]
    assert [(r["reviewer"], r["comment"]) for r in reviews] == [
        ("second", "second look"),
        ("rad", "first"),
    ]
    assert reviews[0]["location"] == {"x": 40.0, "y": 50.0}
    assert reviews[0]["image_id"] == study.image_ids[0]
    assert reviews[0]["created_at"] >= reviews[1]["created_at"]
    assert all(r["verdict"] == "agree" and r["label"] == "fractured" for r in reviews)
