"""The one-image path with a tiny real model package: pictures, DICOM, refusals, storing."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from api.app import create_app
from db.models import Study
from db.review import Role
from tests.api.conftest import login
from tests.api.world import World, add_user, open_world, radiograph


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.training.packages import make_package

    folder = tmp_path_factory.mktemp("package")
    make_package(folder)
    return folder


@pytest.fixture
def model_world(tmp_path: Path, package: Path) -> Iterator[World]:
    built = open_world(tmp_path / "home", inference={"model_path": package})
    yield built
    built.engine.dispose()


@pytest.fixture
def model_client(model_world: World) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(model_world.settings, model_world.sessions, store=model_world.store)
    add_user(model_world, "rad", Role.RADIOLOGIST)
    with TestClient(app) as client:
        yield client, login(client, "rad")


def _png_bytes(width: int = 120, height: int = 90) -> bytes:
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[20:70, 40:60] = 230
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom_bytes(name: str = "UPLOAD^PATIENT") -> bytes:
    ds = radiograph(
        generate_uid(), generate_uid(), generate_uid(), patient_name=name, body_part="HAND"
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_predict_a_picture(model_client: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = model_client
    health = client.get("/api/health").json()
    assert health["model"]["state"] == "not_loaded"
    response = client.post(
        "/api/predict", files={"file": ("x.png", _png_bytes(), "image/png")}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "picture"
    assert 0.0 <= body["probability"] <= 1.0
    assert body["positive"] == (body["probability"] >= body["threshold"])
    assert set(body["labels"]) == {"high_sensitivity", "high_specificity"}
    assert (body["width"], body["height"]) == (120, 90)
    assert (body["model_name"], body["stored"], body["study_id"]) == ("tiny", False, None)
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"]))) as img:
        assert img.format == "PNG"
    assert client.get("/api/health").json()["model"]["state"] == "loaded"
    without = client.post(
        "/api/predict?heatmap=false",
        files={"file": ("x.png", _png_bytes(), "image/png")},
        headers=headers,
    )
    assert without.json()["heatmap_png_base64"] is None


def test_predict_dicom_stores_nothing_unless_asked(
    model_world: World, model_client: tuple[TestClient, dict[str, str]]
) -> None:
    client, headers = model_client
    data = _dicom_bytes()
    response = client.post(
        "/api/predict", files={"file": ("x.dcm", data, "application/dicom")}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["source"] == "dicom"
    assert (response.json()["width"], response.json()["height"]) == (128, 96)
    with model_world.sessions() as session:
        assert session.scalars(select(Study)).all() == []
    stored = client.post(
        "/api/predict?store=true",
        files={"file": ("x.dcm", data, "application/dicom")},
        headers=headers,
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["stored"] is True
    study_id = stored.json()["study_id"]
    with model_world.sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None
        assert study.patient_name == "UPLOAD^PATIENT"
    assert client.get(f"/api/studies/{study_id}", headers=headers).json()["n_images"] == 1


@pytest.mark.parametrize(
    ("content", "query"),
    [
        (b"", ""),
        (b"not an image at all", ""),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, ""),
        (b"\x00" * 128 + b"DICM" + b"\x02\x00garbage", ""),
        (_png_bytes(4, 4), ""),
        (_png_bytes(), "?store=true"),
    ],
)
def test_bad_uploads_are_422(
    model_client: tuple[TestClient, dict[str, str]], content: bytes, query: str
) -> None:
    client, headers = model_client
    response = client.post(
        f"/api/predict{query}",
        files={"file": ("x.bin", content, "application/octet-stream")},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


@pytest.mark.parametrize(
    ("path", "modality"),
    [
        ("highdicom/data/test_files/ct_image.dcm", "CT"),
        ("pydicom/src/pydicom/data/test_files/MR_small.dcm", "MR"),
        ("pydicom/src/pydicom/data/test_files/SC_rgb_small_odd_jpeg.dcm", "OT"),
    ],
)
def test_images_the_model_does_not_cover_are_422(
    model_client: tuple[TestClient, dict[str, str]], shared_dir: Path, path: str, modality: str
) -> None:
    """A CT or MR slice once got a fracture probability; now it is refused, naming no patient."""
    client, headers = model_client
    ds = dcmread(shared_dir / "dicom" / path)
    ds.PatientName, ds.PatientID = "SECRET^PERSON", "ID-4711"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    response = client.post(
        "/api/predict",
        files={"file": ("x.dcm", buffer.getvalue(), "application/dicom")},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    message = response.json()["detail"][0]["msg"]
    assert "CR and DX radiographs only" in message
    assert f"Modality {modality}" in message
    assert "SECRET" not in response.text
    assert "4711" not in response.text


def test_a_radiograph_whose_pixels_contradict_its_header_is_422(
    model_client: tuple[TestClient, dict[str, str]],
) -> None:
    ds = dcmread(io.BytesIO(_dicom_bytes()))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7  # over 16-bit Pixel Data
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    client, headers = model_client
    response = client.post(
        "/api/predict",
        files={"file": ("x.dcm", buffer.getvalue(), "application/dicom")},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    assert "pixel_data_mismatch" in response.json()["detail"][0]["msg"]


def test_missing_model_is_503(client: TestClient, radiologist: dict[str, str]) -> None:
    response = client.post(
        "/api/predict", files={"file": ("x.png", _png_bytes(), "image/png")}, headers=radiologist
    )
    assert response.status_code == 503
    assert client.post("/api/predict", headers=radiologist).status_code == 422
    assert (
        client.post("/api/predict", files={"file": ("x.png", b"x", "image/png")}).status_code == 401
    )
