"""The command line (users, tokens, export) and the de-identified review export."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from api.cli import register
from api.export import CLASS_FOLDERS, export_key, export_reviews, pseudonym
from db.review import ApiToken, AuditEvent, FractureLabel, User
from tests.api.world import SETUP_ACTOR, World, seed_study

PHI = ("EXPORT^CANARY", "PID-", "ACC", "20240105", "XR HAND")


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    monkeypatch.setenv("FRACTURE_GATEWAY_HOME", str(world.home))
    monkeypatch.delenv("FRACTURE_GATEWAY_CONFIG", raising=False)
    app = typer.Typer()
    register(app)
    return app


def test_user_and_token_commands(world: World, cli: typer.Typer, client: TestClient) -> None:
    runner = CliRunner()
    added = runner.invoke(
        cli,
        ["user", "add", "carol", "--role", "admin"],
        env={"FRACTURE_GATEWAY_NEW_PASSWORD": "carol-password"},
    )
    assert added.exit_code == 0, added.output
    again = runner.invoke(
        cli, ["user", "add", "carol"], env={"FRACTURE_GATEWAY_NEW_PASSWORD": "x" * 10}
    )
    assert again.exit_code == 1
    listed = runner.invoke(cli, ["user", "list"])
    assert "carol" in listed.output
    assert "admin" in listed.output
    login = client.post("/api/auth/login", data={"username": "carol", "password": "carol-password"})
    assert login.status_code == 200
    assert runner.invoke(cli, ["user", "disable", "carol"]).exit_code == 0
    assert (
        client.post(
            "/api/auth/login", data={"username": "carol", "password": "carol-password"}
        ).status_code
        == 401
    )

    created = runner.invoke(cli, ["token", "create", "ris", "--expires-days", "30"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("fgw_")
    assert (
        client.get("/api/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    assert "ris" in runner.invoke(cli, ["token", "list"]).output
    assert runner.invoke(cli, ["token", "revoke", "ris"]).exit_code == 0
    assert (
        client.get("/api/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )
    assert runner.invoke(cli, ["token", "revoke", "nothing"]).exit_code == 1
    with world.sessions() as session:
        user = session.scalars(select(User).where(User.username == "carol")).one()
        assert user.password_hash.startswith("$argon2")
        assert not user.active
        assert session.scalars(select(ApiToken)).one().revoked_at is not None
        actors = {
            e.actor
            for e in session.scalars(select(AuditEvent).where(AuditEvent.event_id_code == "110113"))
        }
    assert all(actor.startswith("cli:") for actor in actors)


def _review(
    client: TestClient, headers: dict[str, str], study_id: int, body: dict[str, object]
) -> None:
    response = client.post(f"/api/studies/{study_id}/review", json=body, headers=headers)
    assert response.status_code == 201, response.text


def test_export_writes_deidentified_class_folders(
    world: World, cli: typer.Typer, client: TestClient, radiologist: dict[str, str], tmp_path: Path
) -> None:
    fractured = seed_study(world, patient_name="EXPORT^CANARY", probability=0.9, n_images=2)
    corrected = seed_study(world, patient_name="EXPORT^CANARY", probability=0.7)
    burned = seed_study(world, patient_name="EXPORT^CANARY", probability=0.1, burned_in="YES")
    seed_study(world, patient_name="EXPORT^CANARY", probability=0.9)  # not reviewed
    _review(
        client,
        radiologist,
        fractured.id,
        {
            "verdict": "agree",
            "image_id": fractured.image_ids[1],
            "location": {"x": 64, "y": 48},
            "comment": "EXPORT^CANARY said",
        },
    )
    _review(client, radiologist, corrected.id, {"verdict": "agree"})
    _review(client, radiologist, corrected.id, {"verdict": "disagree", "label": "not_fractured"})
    _review(client, radiologist, burned.id, {"verdict": "agree"})

    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export-reviews", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "left out (burned_in_annotation): 1" in result.output
    fractured_files = sorted((out / "Fractured").glob("*.png"))
    normal_files = sorted((out / "Non_fractured").glob("*.png"))
    key = export_key(world.home)
    assert [p.name for p in fractured_files] == [
        f"{pseudonym(key, fractured.sop_instance_uids[1])}.png"
    ]
    assert [p.name for p in normal_files] == [
        f"{pseudonym(key, corrected.sop_instance_uids[0])}.png"
    ]
    with Image.open(fractured_files[0]) as img:
        assert img.mode == "L"
        assert img.size == (fractured.columns, fractured.rows)
        assert not img.info  # no text chunks
        pixels = np.asarray(img)
    assert pixels.max() == 255
    assert pixels.min() == 0
    with (out / "reviews.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["file"].split("/")[0], r["label"]) for r in rows] == [
        ("Fractured", "fractured"),
        ("Non_fractured", "not_fractured"),
    ]
    assert (rows[0]["location_x"], rows[0]["location_y"]) == ("64.0", "48.0")
    everything = (out / "reviews.csv").read_text() + "".join(p.name for p in out.rglob("*"))
    for marker in PHI:
        assert marker not in everything
    for path in fractured_files + normal_files:
        data = path.read_bytes()
        assert all(marker.encode() not in data for marker in PHI)
    with world.sessions() as session:
        exports = session.scalars(
            select(AuditEvent).where(AuditEvent.event_id_code == "110106")
        ).all()
    assert len(exports) == 1


def test_export_moves_an_image_when_its_label_changes(
    world: World, client: TestClient, radiologist: dict[str, str], tmp_path: Path
) -> None:
    study = seed_study(world, probability=0.9)
    _review(client, radiologist, study.id, {"verdict": "agree"})
    out = tmp_path / "export"
    key = b"k" * 32
    export_reviews(world.sessions, world.store, out, key=key, actor=SETUP_ACTOR)
    assert len(list((out / CLASS_FOLDERS[FractureLabel.FRACTURED]).glob("*.png"))) == 1
    _review(client, radiologist, study.id, {"verdict": "disagree", "label": "not_fractured"})
    summary = export_reviews(world.sessions, world.store, out, key=key, actor=SETUP_ACTOR)
    assert summary.written == {"Fractured": 0, "Non_fractured": 1}
    assert list((out / "Fractured").glob("*.png")) == []
