"""The reader's tools in headless Chromium: window/level, zoom and pan, box toggles,
per-finding feedback, keyboard, the live worklist and the one-image upload; with screenshots
at 1280x720 and 1920x1080 for people to look at (see ``ARTIFACTS``)."""

# ruff: noqa: F811 - the fixtures imported from test_web are parameters by name
from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import uvicorn
from PIL import Image
from sqlalchemy import select

from api.app import create_app
from db.models import ImagePrediction, Study
from db.review import FindingFeedback, Review, Role
from gateway.http import ApiServer
from tests.api.test_web import (  # noqa: F401 - fixtures used by name
    ARTIFACTS,
    CHROMIUM,
    _go,
    _sign_in,
    browser_page,
    patient_expectations,
    served,
)
from tests.api.world import World, add_user, open_world, seed_study
from tests.helpers.tools import require_program

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration

LARGE = {"width": 1920, "height": 1080}

#: A box positive at both operating points, beside the seeded high-sensitivity one.
SURE_REGION = {
    "x0": 20.0,
    "y0": 10.0,
    "x1": 40.0,
    "y1": 30.0,
    "score": 0.9,
    "probability": 0.95,
    "operating_points": ["high_sensitivity", "high_specificity"],
}


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")


def _add_sure_region(world: World, image_id: int) -> None:
    with world.sessions() as session, session.begin():
        prediction = session.scalars(
            select(ImagePrediction).where(ImagePrediction.instance_id == image_id)
        ).one()
        prediction.regions = [*(prediction.regions or []), SURE_REGION]


def _pixel(page: Page, x: int, y: int) -> int:
    """The red value the window/level canvas shows at image pixel ``(x, y)``."""
    return int(
        page.locator("#wl-canvas").evaluate(
            "(c, p) => c.getContext('2d').getImageData(p[0], p[1], 1, 1).data[0]", [x, y]
        )
    )


def _open(page: Page, served: str, study_id: int) -> None:
    from playwright.sync_api import expect

    _sign_in(page, served)
    _go(page, study_id)
    expect(page.locator("#radiograph")).to_have_js_property("naturalWidth", 128)
    expect(page.locator("#stage")).to_have_attribute("data-values", "ready")


def test_window_level_zoom_pan_and_box_toggles(
    world: World, served: str, browser_page: Page
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    study = seed_study(world, patient_name="WINDOW^LEVEL", probability=0.85)
    _add_sure_region(world, study.image_ids[0])
    add_user(world, "rad", Role.RADIOLOGIST)
    _open(page, served, study.id)

    # Window/level: the preview first; a drag switches to the reader's window on the canvas.
    canvas = page.locator("#wl-canvas")
    expect(canvas).to_be_hidden()
    before = page.locator("#wl-readout").inner_text()
    assert before.startswith("W ")
    box = page.locator("#stage").bounding_box()
    assert box is not None
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*centre)
    page.mouse.down()
    page.mouse.move(centre[0], centre[1] - 200, steps=8)  # up: a lower level, brighter
    page.mouse.up()
    expect(canvas).to_be_visible()
    expect(canvas).to_have_attribute("data-image-id", str(study.image_ids[0]))
    expect(page.locator("#wl-readout")).not_to_have_text(before)
    expect(page.locator("#location-text")).to_have_text("No location marked.")  # not a click
    background = _pixel(page, 2, 2)
    assert background > 60, "the background (value 300) should have been lifted from black"
    page.select_option("#wl-preset", "image")
    expect(canvas).to_be_hidden()  # back to the image's own window: the preview
    page.check("#wl-invert")
    expect(canvas).to_be_visible()
    assert _pixel(page, 2, 2) == 255  # inverted: the black background turns white
    page.uncheck("#wl-invert")
    page.select_option("#wl-preset", "narrow")
    expect(page.locator("#wl-readout")).to_have_text("W 1600 L 1900")
    _shot(page, "reader-window-level-1280.png")

    # Zoom about the cursor, pan with Shift+drag, fit again.
    layer = page.locator("#layer")
    fitted = layer.bounding_box()
    assert fitted is not None
    page.mouse.move(*centre)
    page.mouse.wheel(0, -300)
    expect(page.locator("#zoom-readout")).to_have_text("125 %")
    zoomed = layer.bounding_box()
    assert zoomed is not None
    assert zoomed["width"] == pytest.approx(fitted["width"] * 1.25, abs=2)
    page.keyboard.down("Shift")
    page.mouse.down()
    page.mouse.move(centre[0] + 60, centre[1] + 30, steps=5)
    page.mouse.up()
    page.keyboard.up("Shift")
    panned = layer.bounding_box()
    assert panned is not None
    assert panned["x"] == pytest.approx(zoomed["x"] + 60, abs=2)
    assert panned["y"] == pytest.approx(zoomed["y"] + 30, abs=2)
    page.click("#fit")
    expect(page.locator("#zoom-readout")).to_have_text("100 %")
    assert layer.bounding_box() == fitted

    # Boxes: solid at high specificity, dashed at high sensitivity only; each toggles.
    solid, dashed = page.locator("#boxes rect.solid"), page.locator("#boxes rect.dashed")
    expect(solid).to_have_count(1)
    expect(dashed).to_have_count(1)
    expect(solid).to_be_visible()
    expect(dashed).to_be_visible()
    page.uncheck("#boxes-dashed")
    expect(dashed).to_be_hidden()
    expect(solid).to_be_visible()
    page.uncheck("#boxes-solid")
    expect(solid).to_be_hidden()
    page.check("#boxes-dashed")
    expect(dashed).to_be_visible()
    # The heat map overlay keeps its opacity control.
    page.check("#heatmap-toggle")
    expect(page.locator("#heatmap")).to_be_visible()
    page.locator("#heatmap-opacity").fill("30")
    assert page.locator("#heatmap").evaluate("el => el.style.opacity") == "0.3"


def test_per_finding_feedback_is_stored(world: World, served: str, browser_page: Page) -> None:
    from playwright.sync_api import expect

    page = browser_page
    study = seed_study(world, patient_name="FINDING^FEEDBACK", probability=0.85)
    add_user(world, "rad", Role.RADIOLOGIST)
    _open(page, served, study.id)
    finding = page.locator("#findings li[data-region-index='0']")
    expect(finding).to_contain_text("high sensitivity only (dashed)")
    finding.locator("button.wrong").click()
    expect(page.locator("#message")).to_contain_text("Feedback saved: box 1 marked wrong")
    expect(finding.locator(".given")).to_have_text("wrong (rad)")

    page.click("#mark-missed")
    expect(page.locator("#missed-hint")).to_be_visible()
    image = page.locator("#radiograph").bounding_box()
    assert image is not None
    start = (image["x"] + image["width"] * 0.1, image["y"] + image["height"] * 0.2)
    end = (image["x"] + image["width"] * 0.3, image["y"] + image["height"] * 0.6)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=6)
    page.mouse.up()
    expect(page.locator("#message")).to_contain_text("missed fracture recorded")
    expect(page.locator("#boxes rect.missed")).to_have_count(1)
    expect(page.locator("#location-text")).to_have_text("No location marked.")
    _shot(page, "reader-findings-1280.png")

    with world.sessions() as session:
        stored = session.scalars(select(FindingFeedback).order_by(FindingFeedback.id)).all()
    assert [(f.verdict, f.region_index) for f in stored] == [("wrong", 0), ("missed", None)]
    missed = stored[1]
    assert missed.x0 == pytest.approx(0.1 * 128, abs=1.5)
    assert missed.y1 == pytest.approx(0.6 * 96, abs=1.5)


def test_keyboard_moves_through_the_worklist_and_agrees(
    world: World, served: str, browser_page: Page
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    first = seed_study(world, patient_name="FIRST^STUDY", probability=0.95)
    second = seed_study(world, patient_name="SECOND^STUDY", probability=0.7)
    add_user(world, "rad", Role.RADIOLOGIST)
    _sign_in(page, served)
    page.locator("#worklist tbody tr").first.click()
    expect(page.locator("#study-title")).to_have_text("FIRST STUDY")
    page.keyboard.press("n")
    expect(page.locator("#study-title")).to_have_text("SECOND STUDY")
    expect(page).to_have_url(f"{served}/#/studies/{second.id}")
    page.keyboard.press("p")
    expect(page.locator("#study-title")).to_have_text("FIRST STUDY")
    expect(page.locator("#agree")).to_be_enabled()
    page.keyboard.press("a")
    expect(page.locator("#message")).to_contain_text("Review saved: agree, fractured")
    page.fill("#review-comment", "typing n and a here is text, not a shortcut")
    expect(page.locator("#study-title")).to_have_text("FIRST STUDY")
    with world.sessions() as session:
        reviews = session.scalars(select(Review)).all()
    assert [(r.study_id, r.verdict) for r in reviews] == [(first.id, "agree")]


def test_live_worklist_shows_a_new_study_and_keeps_filter_and_scroll(
    world: World, served: str, browser_page: Page
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    for number in range(24):
        seed_study(world, patient_name=f"EARLIER^{number:02d}", probability=0.8)
    add_user(world, "rad", Role.RADIOLOGIST)
    _sign_in(page, served)
    page.select_option("#filter-result", "positive")
    rows = page.locator("#worklist tbody tr")
    expect(rows).to_have_count(24)
    scroller = page.locator("#worklist-scroll")
    scroller.evaluate("el => { el.scrollTop = 150; }")
    assert scroller.evaluate("el => el.scrollTop") == 150

    arrived = time.monotonic()
    seed_study(world, patient_name="ARRIVED^POSITIVE", probability=0.9)
    seed_study(world, patient_name="ARRIVED^NEGATIVE", probability=0.1)
    expect(rows).to_have_count(25)  # nothing pressed: the page polls
    print(f"live worklist: the new study appeared {time.monotonic() - arrived:.1f} s after ingest")
    expect(page.locator("#worklist")).to_contain_text("ARRIVED POSITIVE")
    expect(page.locator("#worklist")).not_to_contain_text("ARRIVED NEGATIVE")
    assert page.locator("#filter-result").input_value() == "positive"
    assert scroller.evaluate("el => el.scrollTop") == 150
    expect(page.locator("#op-legend")).to_contain_text("High sensitivity")
    _shot(page, "reader-worklist-1280.png")


def test_screenshots_at_full_hd(world: World, served: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    require_program(CHROMIUM)
    study = seed_study(world, patient_name="FULL^HD", probability=0.85, n_images=2)
    _add_sure_region(world, study.image_ids[0])
    seed_study(world, patient_name="OTHER^PATIENT", probability=0.3)
    add_user(world, "rad", Role.RADIOLOGIST)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport=LARGE)
            _sign_in(page, served)
            expect(page.locator("#worklist tbody tr")).to_have_count(2)
            _shot(page, "reader-worklist-1920.png")
            _go(page, study.id)
            expect(page.locator("#stage")).to_have_attribute("data-values", "ready")
            page.check("#heatmap-toggle")
            stage = page.locator("#stage").bounding_box()
            assert stage is not None
            # The image uses the space: the stage takes most of a full-HD screen.
            assert stage["width"] > 0.55 * LARGE["width"]
            assert stage["height"] > 0.75 * LARGE["height"]
            _shot(page, "reader-study-1920.png")
        finally:
            browser.close()


# Upload ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.training.packages import make_package

    folder = tmp_path_factory.mktemp("package")
    make_package(folder)
    return folder


@pytest.fixture
def model_served(tmp_path: Path, package: Path) -> Iterator[tuple[World, str]]:
    built = open_world(tmp_path / "home", inference={"model_path": package})
    app = create_app(built.settings, built.sessions, store=built.store)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = ApiServer(uvicorn.Server(config))
    server.start()
    yield built, f"http://127.0.0.1:{server.port}"
    server.stop()
    built.engine.dispose()


def _png(width: int = 160, height: int = 120) -> bytes:
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[20:100, 60:90] = 230
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_a_good_and_a_bad_file(model_served: tuple[World, str], browser_page: Page) -> None:
    from playwright.sync_api import expect

    world, url = model_served
    page = browser_page
    add_user(world, "rad", Role.RADIOLOGIST)
    _sign_in(page, url)
    page.click("#nav-upload")
    expect(page.locator("#upload-view")).to_be_visible()
    expect(page.locator("#upload-keep")).not_to_be_checked()  # nothing kept by default

    page.set_input_files(
        "#upload-file", files=[{"name": "wrist.png", "mimeType": "image/png", "buffer": _png()}]
    )
    headline = page.locator("#upload-headline")
    expect(headline).to_have_text(re.compile("^(Fracture suspected|No fracture found)$"))
    details = page.locator("#upload-details")
    expect(details).to_contain_text("Probability")
    expect(details).to_contain_text("High sensitivity (≥")
    expect(details).to_contain_text("High specificity (≥")
    expect(details).to_contain_text("no, nothing was kept")
    expect(page.locator("#upload-picture")).to_have_attribute(
        "src", re.compile("^data:image/png;base64,")
    )
    expect(page.locator("#upload-picture")).to_have_js_property("naturalWidth", 160)
    _shot(page, "reader-upload-1280.png")

    page.set_input_files(
        "#upload-file",
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image at all"}],
    )
    expect(page.locator("#message")).to_contain_text("This file cannot be analysed")
    expect(page.locator("#message")).to_contain_text("not a DICOM file, PNG or JPEG picture")
    expect(page.locator("#upload-result")).to_be_hidden()
    with world.sessions() as session:
        assert session.scalars(select(Study)).all() == []  # nothing uploaded was kept


#: Large real radiographs (rows, columns): uncompressed and JPEG 2000 (docs/PERFORMANCE.md).
LARGE_RADIOGRAPHS = {
    "RG2_UNC": ("robyoung-dicom-test-files/data/WG04/REF/RG2_UNC", 2140, 1760),
    "NM_Kakadu44_J2KR": (
        "pylibjpeg-data/ljdata/ds/JPEG2000Lossless/NM_Kakadu44_SOTmarkerincons.dcm",
        2500,
        2048,
    ),
}


def _seed_real(
    world: World, shared: Path, relative: str, rows: int, columns: int
) -> tuple[int, int, Path]:
    """A study whose one stored image is the real file at ``relative`` under the shared data."""
    import shutil

    from pydicom import dcmread

    from db.models import Instance

    source = shared / "dicom" / relative
    if not source.exists():
        pytest.fail(f"missing shared test file {source}")
    study = seed_study(world, patient_name="LARGE^IMAGE", rows=rows, columns=columns)
    image_id = study.image_ids[0]
    with world.sessions() as session, session.begin():
        instance = session.get_one(Instance, image_id)
        shutil.copyfile(source, world.store.absolute(instance.storage_path))
        syntax = dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
        instance.transfer_syntax_uid = str(syntax)
    return study.id, image_id, source


def _until(page: Page, probe: str, selector: str, timeout_s: float = 60.0) -> float:
    """Seconds (perf_counter) at which ``probe`` on ``selector`` first holds; polled."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if page.locator(selector).evaluate(probe):
            return time.perf_counter()
        page.wait_for_timeout(20)
    raise AssertionError(f"{probe} on {selector} did not hold within {timeout_s} s")


@pytest.mark.parametrize("name", sorted(LARGE_RADIOGRAPHS))
def test_full_resolution_at_one_to_one(
    world: World, served: str, browser_page: Page, shared_dir: Path, name: str
) -> None:
    """Zoomed to one screen pixel per image pixel, the canvas holds the image's own pixels."""
    from playwright.sync_api import expect

    from api.viewer_pixels import viewer_pixels

    relative, rows, columns = LARGE_RADIOGRAPHS[name]
    page = browser_page
    add_user(world, "rad", Role.RADIOLOGIST)
    study_id, image_id, source = _seed_real(world, shared_dir, relative, rows, columns)
    transferred: list[tuple[str, int]] = []
    page.on(
        "requestfinished",
        lambda r: transferred.append((r.url, r.sizes()["responseBodySize"])),
    )
    _sign_in(page, served)
    transferred.clear()
    opened = time.perf_counter()
    _go(page, study_id)
    first = _until(page, "img => img.complete && img.naturalWidth > 0", "#radiograph")
    _until(page, "s => s.dataset.values === 'ready'", "#stage")
    before_zoom = sum(size for _, size in transferred)
    picture = page.locator("#radiograph").evaluate("img => img.naturalWidth")
    print(
        f"\n{name} {columns}x{rows}: first picture {first - opened:.2f} s "
        f"({picture} px wide), {before_zoom / 1e6:.1f} MB before zoom"
    )

    # Wheel in about the centre until the image has a screen pixel per image pixel or more.
    box = page.locator("#stage").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    zoomed = time.perf_counter()
    while True:
        layer = page.locator("#layer").bounding_box()
        assert layer is not None
        if layer["width"] >= columns:
            break
        page.mouse.wheel(0, -100)
        deadline = time.perf_counter() + 5
        while page.locator("#layer").bounding_box() == layer:
            assert time.perf_counter() < deadline, "the wheel did not zoom"
            page.wait_for_timeout(20)
    full = _until(page, "s => s.dataset.values === 'full'", "#stage", timeout_s=20)
    canvas = page.locator("#wl-canvas")
    expect(canvas).to_be_visible()
    expect(canvas).to_have_attribute("data-image-id", str(image_id))
    size = canvas.evaluate("c => [c.width, c.height]")
    print(
        f"{name}: full resolution {full - zoomed:.2f} s after the zoom began, "
        f"{sum(s for _, s in transferred) / 1e6:.1f} MB in all"
    )
    assert size == [columns, rows]
    assert picture < columns, "the first picture should be the reduced one"

    # The canvas at the image's window, pixel for pixel, against the values computed here.
    from pydicom import dcmread

    values = viewer_pixels(dcmread(source), max(rows, columns))
    assert values.values.shape == (rows, columns)
    x0, y0, n = columns // 2 - 8, rows // 2 - 8, 16
    shown = np.array(
        canvas.evaluate(
            "(c, p) => Array.from(c.getContext('2d').getImageData(p[0], p[1], p[2], p[2]).data)",
            [x0, y0, n],
        ),
        dtype=np.float64,
    ).reshape(n, n, 4)[..., 0]
    patch = values.values[y0 : y0 + n, x0 : x0 + n].astype(np.float64)
    modality = values.offset + values.scale * (patch - 1)
    w = values.window
    if w.function.value == "LINEAR":
        grey = (modality - (w.center - 0.5)) / (w.width - 1) + 0.5
    elif w.function.value == "SIGMOID":
        grey = 1 / (1 + np.exp(-4 * (modality - w.center) / w.width))
    else:
        grey = (modality - w.center) / w.width + 0.5
    grey = np.clip(grey, 0, 1)
    expected = np.rint((1 - grey if values.invert else grey) * 255)
    expected[patch == 0] = 0
    assert np.abs(shown - expected).max() <= 1
    assert np.ptp(shown) > 0, "a flat patch proves nothing; pick a patch with detail"
