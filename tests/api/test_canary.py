"""A canary patient never leaks: not into logs, error bodies, URLs, headers or the audit trail."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from db.results import OutboxState
from db.review import AuditEvent
from tests.api.world import World, seed_study

CANARY = "CANARY^PATIENT"
CANARY_PARTS = ("CANARY", "PATIENT^", "^PATIENT")


def _leaks(text: str) -> bool:
    return any(part in text for part in CANARY_PARTS)


def test_canary_never_leaks(
    world: World,
    client: TestClient,
    radiologist: dict[str, str],
    admin: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    study = seed_study(
        world, patient_name=CANARY, n_images=2, deliveries=(OutboxState.DEAD_LETTER,)
    )
    blank = seed_study(world, patient_name=CANARY, probability=None)
    with world.sessions() as session:
        from db.models import Instance

        broken = session.get(Instance, blank.image_ids[0])
        assert broken is not None
        world.store.absolute(broken.storage_path).write_bytes(b"not dicom")

    worklist = client.get("/api/studies", headers=radiologist)
    assert worklist.status_code == 200
    assert CANARY in worklist.text  # the body may carry it, to authenticated callers ...
    links = [item["url"] for item in worklist.json()["items"]]
    detail = client.get(f"/api/studies/{study.id}", headers=radiologist).json()
    links += [image["preview_url"] for image in detail["images"]]
    links += [image["heatmap_url"] for image in detail["images"] if image["heatmap_url"]]
    assert links
    for link in links:  # ... but never a URL
        assert not _leaks(link)
        assert "1.2." not in link  # nor a UID

    review = client.post(
        f"/api/studies/{study.id}/review",
        json={"verdict": "disagree", "label": "not_fractured", "comment": "seen"},
        headers=radiologist,
    )
    assert review.status_code == 201
    assert not _leaks(review.headers["location"])

    refusals = [
        client.get("/api/studies/999999", headers=radiologist),
        client.get(f"/api/studies/{study.id}/images/999999/preview.png", headers=radiologist),
        client.get(
            f"/api/studies/{blank.id}/images/{blank.image_ids[0]}/preview.png", headers=radiologist
        ),
        client.get(
            f"/api/studies/{blank.id}/images/{blank.image_ids[0]}/heatmap.png", headers=radiologist
        ),
        client.post(
            f"/api/studies/{study.id}/review",
            json={
                "verdict": "agree",
                "image_id": study.image_ids[0],
                "location": {"x": 1e6, "y": 0},
            },
            headers=radiologist,
        ),
        client.post(
            f"/api/studies/{blank.id}/review", json={"verdict": "agree"}, headers=radiologist
        ),
        client.get("/api/studies?received_from=yesterday", headers=radiologist),
        client.get(f"/api/studies/{study.id}"),
        client.get(f"/api/studies/{study.id}", headers={"Authorization": "Bearer forged"}),
        client.get("/api/admin/audit", headers=radiologist),
        client.post("/api/admin/outbox/999999/retry", headers=admin),
        client.post(
            "/api/predict",
            files={"file": ("x.dcm", b"junk", "application/dicom")},
            headers=radiologist,
        ),
    ]
    for response in refusals:
        assert response.status_code >= 400
        assert not _leaks(response.text), response.text
        assert not any(_leaks(value) for value in response.headers.values())

    for response in (
        client.get("/api/stats", headers=radiologist),
        client.get("/api/admin/outbox", headers=admin),
        client.get("/api/admin/audit", headers=admin),
        client.get("/metrics"),
        client.get("/api/health"),
    ):
        assert response.status_code == 200
        assert not _leaks(response.text)

    logged = "\n".join(
        f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert not _leaks(logged)
    with world.sessions() as session:
        trail = " ".join(
            f"{e.actor} {e.object_id} {e.detail}" for e in session.scalars(select(AuditEvent))
        )
    assert not _leaks(trail)
