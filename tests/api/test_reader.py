"""What the reader's page relies on: worklist columns, order and version; the viewer's values;
per-finding feedback (stored, audited, exported); the model's operating points."""

from __future__ import annotations

import csv
import io
import json
import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset
from sqlalchemy import select

from api.app import create_app
from api.export import export_key, export_reviews, pseudonym
from api.viewer_pixels import viewer_pixels
from db.base import utcnow
from db.models import Eligibility, Instance, Study
from db.review import AuditEvent, FindingFeedback, Role
from tests.api.conftest import login
from tests.api.world import REGIONS, SETUP_ACTOR, World, add_user, open_world, seed_study


def _items(client: TestClient, headers: dict[str, str], query: str = "") -> list[dict[str, Any]]:
    response = client.get(f"/api/studies?{query}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


def test_worklist_columns_for_the_reader(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    received = utcnow() - timedelta(minutes=5)
    study = seed_study(world, probability=0.95, received_at=received)
    with world.sessions() as session, session.begin():
        row = session.get(Study, study.id)
        assert row is not None
        row.patient_sex, row.patient_birth_date, row.study_date = "F", "19800615", "20240105"
    item = _items(client, radiologist)[0]
    assert item["patient_sex"] == "F"
    assert item["patient_age"] == "043Y"  # from the birth date: before the birthday in 2024
    assert item["accession_number"].startswith("ACC")
    assert item["study_description"] == "XR HAND"
    assert item["turnaround_s"] == pytest.approx(30.0)
    assert item["result"]["positive_high_sensitivity"] is True
    assert item["result"]["positive_high_specificity"] is True
    assert item["not_applicable_reason"] is None
    with world.sessions() as session, session.begin():
        row = session.get(Study, study.id)
        assert row is not None
        row.patient_age = "007M"  # sent by the modality: shown as sent
    assert _items(client, radiologist)[0]["patient_age"] == "007M"


def test_a_study_outside_the_models_scope_says_why(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    chest = seed_study(world, probability=None, body_part="CHEST")
    waiting = seed_study(world, probability=None)
    with world.sessions() as session, session.begin():
        for instance in session.scalars(select(Instance).where(Instance.study_id == chest.id)):
            instance.eligibility = Eligibility.OUT_OF_SCOPE
            instance.eligibility_reason = "body part CHEST is outside the model's scope"
    items = {item["id"]: item for item in _items(client, radiologist)}
    assert items[chest.id]["result"] is None
    assert items[chest.id]["not_applicable_reason"] == (
        "body part CHEST is outside the model's scope"
    )
    assert items[waiting.id]["not_applicable_reason"] is None  # eligible: still to analyse


def test_default_order_puts_positives_then_unreviewed_then_oldest_first(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    now = utcnow()
    sure = seed_study(world, probability=0.95, received_at=now)  # high specificity too
    old_reviewed = seed_study(world, probability=0.6, received_at=now - timedelta(hours=3))
    old = seed_study(world, probability=0.7, received_at=now - timedelta(hours=2))
    recent = seed_study(world, probability=0.8, received_at=now - timedelta(hours=1))
    negative = seed_study(world, probability=0.1, received_at=now - timedelta(hours=4))
    response = client.post(
        f"/api/studies/{old_reviewed.id}/review", json={"verdict": "agree"}, headers=radiologist
    )
    assert response.status_code == 201
    ids = [item["id"] for item in _items(client, radiologist)]
    assert ids == [sure.id, old.id, recent.id, old_reviewed.id, negative.id]
    ids = [item["id"] for item in _items(client, radiologist, "sort=oldest")]
    assert ids == [negative.id, old_reviewed.id, old.id, recent.id, sure.id]
    ids = [item["id"] for item in _items(client, radiologist, "sort=probability")]
    assert ids == [sure.id, recent.id, old.id, old_reviewed.id, negative.id]
    assert client.get("/api/studies?sort=bogus", headers=radiologist).status_code == 422


def test_the_worklist_version_moves_with_what_the_worklist_shows(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    def version() -> str:
        response = client.get("/api/studies/version", headers=radiologist)
        assert response.status_code == 200, response.text
        return str(response.json()["version"])

    assert client.get("/api/studies/version").status_code == 401
    empty = version()
    assert version() == empty  # stable while nothing changes
    study = seed_study(world, probability=0.7)
    arrived = version()
    assert arrived != empty
    client.post(f"/api/studies/{study.id}/review", json={"verdict": "agree"}, headers=radiologist)
    assert version() != arrived
    with world.sessions() as session:
        audited = session.scalars(
            select(AuditEvent).where(AuditEvent.object_type == "worklist")
        ).all()
    assert audited == []  # the poll is not a worklist read; nothing to audit


def _decode(body: bytes) -> tuple[dict[str, Any], np.ndarray]:
    (length,) = struct.unpack("<I", body[:4])
    header = json.loads(body[4 : 4 + length])
    values = np.frombuffer(body[4 + length :], dtype="<u2").reshape(
        header["rows"], header["columns"]
    )
    return header, values


def test_viewer_values_keep_the_range_the_preview_windows_away(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=0.8)
    url = f"/api/studies/{study.id}/images/{study.image_ids[0]}/pixels"
    response = client.get(url, headers=radiologist)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, values = _decode(response.content)
    assert (header["rows"], header["columns"]) == (96, 128)
    assert (header["image_rows"], header["image_columns"]) == (96, 128)
    modality = header["offset"] + header["scale"] * (values.astype(np.float64) - 1)
    # The seeded image: background 300, a bone bar 3500 (12 bits, no window in the header).
    assert np.unique(np.rint(modality)).tolist() == [300.0, 3500.0]
    assert header["window"]["function"] == "LINEAR_EXACT"
    assert header["invert"] is False
    small = client.get(f"{url}?max_size=64", headers=radiologist)
    assert _decode(small.content)[0]["columns"] == 64
    assert (
        client.get(f"/api/studies/{study.id}/images/999/pixels", headers=radiologist).status_code
        == 404
    )


def _image(**attrs: object) -> Dataset:
    from tests.api.world import radiograph

    ds = radiograph("1.2.3", "1.2.3.4", "1.2.3.4.5", patient_name="X", body_part="HAND")
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_viewer_window_starts_from_the_images_own_voi() -> None:
    windowed = viewer_pixels(_image(WindowCenter=2000, WindowWidth=1000), 1024)
    assert (windowed.window.center, windowed.window.width) == (2000.0, 1000.0)
    assert windowed.window.function == "LINEAR"
    inverted = viewer_pixels(_image(PhotometricInterpretation="MONOCHROME1"), 1024)
    assert inverted.invert is True
    padded = viewer_pixels(_image(PixelPaddingValue=300), 1024)
    assert int((padded.values == 0).sum()) == 96 * 128 - 48 * 22  # all but the bone bar
    assert padded.window.center == pytest.approx(3500.0, abs=1.0)


def test_the_heat_map_overlay_is_transparent_where_nothing_is_suspected(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=0.8)
    url = f"/api/studies/{study.id}/images/{study.image_ids[0]}/heatmap.png?overlay=true"
    response = client.get(url, headers=radiologist)
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.mode == "RGBA"
        alpha = np.asarray(img)[:, :, 3]
    assert alpha.max() == 255
    assert alpha.min() == 0
    assert 0.01 < float((alpha > 0).mean()) < 0.5


def _feedback(
    client: TestClient, headers: dict[str, str], study_id: int, image_id: int, body: object
) -> Any:
    return client.post(
        f"/api/studies/{study_id}/images/{image_id}/feedback", json=body, headers=headers
    )


def test_finding_feedback_is_stored_with_a_snapshot_and_audited(
    world: World, client: TestClient, radiologist: dict[str, str]
) -> None:
    study = seed_study(world, probability=0.8)
    image = study.image_ids[0]
    right = _feedback(
        client, radiologist, study.id, image, {"verdict": "correct", "region_index": 0}
    )
    assert right.status_code == 201, right.text
    body = right.json()
    assert body["box"] == {k: REGIONS[0][k] for k in ("x0", "y0", "x1", "y1")}
    assert (body["ai_probability"], body["operating_points"]) == (0.8, ["high_sensitivity"])
    assert (body["reviewer"], body["model_name"]) == ("rad", "tiny")
    missed = _feedback(
        client,
        radiologist,
        study.id,
        image,
        {"verdict": "missed", "box": {"x0": 5, "y0": 6, "x1": 20, "y1": 30}},
    )
    assert missed.status_code == 201, missed.text

    detail = client.get(f"/api/studies/{study.id}", headers=radiologist).json()
    shown = detail["images"][0]["feedback"]
    assert [(f["verdict"], f["region_index"]) for f in shown] == [("correct", 0), ("missed", None)]
    with world.sessions() as session:
        stored = session.scalars(select(FindingFeedback).order_by(FindingFeedback.id)).all()
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.object_type == "finding_feedback")
        ).all()
    assert [(f.verdict, f.x0, f.y1) for f in stored] == [("correct", 60.0, 55.0), ("missed", 5, 30)]
    assert sorted(e.object_id for e in events) == sorted(str(f.id) for f in stored)
    assert all(e.action == "C" and e.outcome == 0 for e in events)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"verdict": "correct", "region_index": 1}, "region_index"),  # one box only
        ({"verdict": "missed", "box": {"x0": 5, "y0": 5, "x1": 500, "y1": 20}}, "box"),
        ({"verdict": "missed", "region_index": 0}, None),
        ({"verdict": "wrong"}, None),
        ({"verdict": "missed", "box": {"x0": 9, "y0": 5, "x1": 3, "y1": 20}}, None),
    ],
)
def test_finding_feedback_that_does_not_fit_is_refused(
    world: World,
    client: TestClient,
    radiologist: dict[str, str],
    body: dict[str, object],
    field: str | None,
) -> None:
    study = seed_study(world, probability=0.8)
    response = _feedback(client, radiologist, study.id, study.image_ids[0], body)
    assert response.status_code == 422, response.text
    if field is not None:
        assert response.json()["detail"][0]["loc"] == ["body", field]
    other = seed_study(world, probability=0.8)
    wrong_study = _feedback(
        client, radiologist, study.id, other.image_ids[0], {"verdict": "correct", "region_index": 0}
    )
    assert wrong_study.status_code == 404
    with world.sessions() as session:
        assert session.scalars(select(FindingFeedback)).all() == []


def test_finding_feedback_goes_into_the_training_export(
    world: World, client: TestClient, radiologist: dict[str, str], tmp_path: Path
) -> None:
    study = seed_study(world, patient_name="EXPORT^CANARY", probability=0.8, columns=256, rows=192)
    image = study.image_ids[0]
    for verdict in ("wrong", "correct"):  # the reader changed their mind: the latest counts
        _feedback(client, radiologist, study.id, image, {"verdict": verdict, "region_index": 0})
    _feedback(
        client,
        radiologist,
        study.id,
        image,
        {"verdict": "missed", "box": {"x0": 10, "y0": 10, "x1": 50, "y1": 40}, "comment": "CANARY"},
    )
    client.post(f"/api/studies/{study.id}/review", json={"verdict": "agree"}, headers=radiologist)
    out = tmp_path / "export"
    key = export_key(world.home)
    export_reviews(world.sessions, world.store, out, key=key, actor=SETUP_ACTOR)
    with (out / "findings.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    name = f"Fractured/{pseudonym(key, study.sop_instance_uids[0])}.png"
    assert [(r["file"], r["verdict"], r["x0"], r["y1"]) for r in rows] == [
        (name, "correct", "60.0", "55.0"),
        (name, "missed", "10.0", "40.0"),
    ]
    assert rows[0]["operating_points"] == "high_sensitivity"
    assert "CANARY" not in (out / "findings.csv").read_text()


def test_model_card_endpoint_gives_both_operating_points(tmp_path: Path) -> None:
    bundled = Path(__file__).resolve().parents[2] / "models" / "fracture-small"
    built = open_world(tmp_path / "home", inference={"model_path": bundled})
    add_user(built, "rad", Role.RADIOLOGIST)
    with TestClient(create_app(built.settings, built.sessions, store=built.store)) as client:
        headers = login(client, "rad")
        body = client.get("/api/model", headers=headers).json()
        assert client.get("/api/health").json()["model"]["state"] == "not_loaded"
    built.engine.dispose()
    points = {p["name"]: p for p in body["operating_points"]}
    assert set(points) == {"high_sensitivity", "high_specificity"}
    assert points["high_sensitivity"]["threshold"] == pytest.approx(0.0660193503063371)
    assert body["operating_point"] == "high_sensitivity"


def test_model_card_endpoint_without_a_model(
    client: TestClient, radiologist: dict[str, str]
) -> None:
    response = client.get("/api/model", headers=radiologist)
    assert response.status_code == 503
    assert "model card" in response.json()["detail"]
