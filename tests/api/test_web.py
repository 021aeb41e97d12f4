"""The web page end to end in headless Chromium: log in, open a study, heat map, review;
and the reader's-workstation safety rules (whose picture is shown, what a review can say)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvicorn
from sqlalchemy import select

from api.app import create_app
from db.base import utcnow
from db.models import ImagePrediction
from db.review import FractureLabel, Review, Role, Verdict
from gateway.http import ApiServer
from tests.api.world import PASSWORD, World, add_user, make_undecodable, seed_study
from tests.helpers.tools import require_program

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request, Route

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
#: Screenshots for people to look at (git-ignored); FRACTURE_GATEWAY_TEST_ARTIFACTS moves them.
ARTIFACTS = Path(
    os.environ.get(
        "FRACTURE_GATEWAY_TEST_ARTIFACTS",
        str(Path(__file__).resolve().parents[2] / "test-artifacts"),
    )
)


#: Expectations retry until this many milliseconds: generous, as CI machines may be busy.
EXPECT_TIMEOUT_MS = 30_000


@pytest.fixture(autouse=True)
def patient_expectations() -> None:
    require_program(CHROMIUM)
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)


@pytest.fixture
def served(world: World) -> Iterator[str]:
    app = create_app(world.settings, world.sessions, store=world.store)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = ApiServer(uvicorn.Server(config))
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def _wait_until_loaded(page: Page, selector: str, timeout_s: float = 10.0) -> None:
    """Wait for an image to be decoded (polled: the page's CSP forbids eval'd predicates)."""
    for _ in range(int(timeout_s / 0.1)):
        if page.locator(selector).evaluate("img => img.complete && img.naturalWidth > 0"):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{selector} did not load")


def test_log_in_open_study_toggle_heatmap_and_review(world: World, served: str) -> None:
    require_program(CHROMIUM)
    from playwright.sync_api import expect, sync_playwright

    study = seed_study(world, patient_name="WEB^PATIENT", probability=0.85, n_images=2)
    seed_study(world, patient_name="OTHER^PATIENT", probability=0.2)
    add_user(world, "rad", Role.RADIOLOGIST)
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(served)
            page.fill("#username", "rad")
            page.fill("#password", PASSWORD)
            page.click("#login-button")

            rows = page.locator("#worklist tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.first).to_contain_text("WEB PATIENT")  # positive first
            expect(rows.first).to_contain_text("positive")
            rows.first.click()

            expect(page).to_have_url(f"{served}/#/studies/{study.id}")
            expect(page.locator("#ai-result")).to_have_text("Fracture suspected")
            expect(page.locator("#ai-details")).to_contain_text("high sensitivity")
            radiograph = page.locator("#radiograph")
            _wait_until_loaded(page, "#radiograph")
            assert (radiograph.get_attribute("src", timeout=5000) or "").startswith("blob:")

            heatmap = page.locator("#heatmap")
            expect(heatmap).to_be_hidden()
            page.check("#heatmap-toggle")
            expect(heatmap).to_be_visible()
            _wait_until_loaded(page, "#heatmap")
            page.locator("#heatmap-opacity").fill("40")
            assert heatmap.evaluate("el => el.style.opacity") == "0.4"

            box = radiograph.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
            # A quarter of 128 pixels, within a screen pixel of rounding.
            expect(page.locator("#location-text")).to_contain_text(
                re.compile(r"Fracture marked at x (31\.\d|32(\.\d)?),")
            )
            page.fill("#review-comment", "fracture confirmed")
            page.click("#agree")
            expect(page.locator("#message")).to_contain_text("Review saved: agree, fractured")
            page.screenshot(path=str(ARTIFACTS / "web-study-review.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()

    with world.sessions() as session:
        review = session.scalars(select(Review)).one()
    assert review.study_id == study.id
    assert (review.verdict, review.label) == ("agree", "fractured")
    assert review.comment == "fracture confirmed"
    assert review.instance_id in study.image_ids
    assert review.location_x is not None
    assert 28 <= review.location_x <= 36
    assert review.location_y is not None
    assert 44 <= review.location_y <= 52


# The reader's workstation: another patient's picture, undecodable images, double saves, labels,
# history. Each test waits on conditions in the page (auto-retrying expectations, awaited
# requests and console messages), never on fixed sleeps.

VIEWPORT = {"width": 1280, "height": 720}

#: Runs before the page's own script: samples, once per animation frame, what the viewer shows
#: (each picture's natural width, 0 when nothing is drawn) and after which hash change, so a test
#: can check that an earlier study's picture never appeared after the switch to another one.
FRAME_RECORDER = """
(() => {
  window.__frames = [];
  window.__after = null;
  addEventListener("hashchange", () => { window.__after = location.hash; });
  const shown = (id) => {
    const img = document.getElementById(id);
    if (!img || img.closest("[hidden]") || !img.complete) return 0;
    return img.naturalWidth;
  };
  let last = "";
  const sample = () => {
    const frame = {
      after: window.__after, radiograph: shown("radiograph"), heatmap: shown("heatmap"),
    };
    const key = JSON.stringify(frame);
    if (key !== last) { window.__frames.push(frame); last = key; }
    requestAnimationFrame(sample);
  };
  requestAnimationFrame(sample);
})();
"""


@pytest.fixture
def browser_page() -> Iterator[Page]:
    require_program(CHROMIUM)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert errors == []
        finally:
            browser.close()


def _sign_in(page: Page, served: str) -> None:
    from playwright.sync_api import expect

    page.goto(served)
    page.fill("#username", "rad")
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    expect(page.locator("#worklist-view")).to_be_visible()


def _go(page: Page, study_id: int) -> None:
    """Open a study the way a link does: a hash change."""
    page.evaluate("hash => { location.hash = hash; }", f"#/studies/{study_id}")


def _expect_shown(page: Page, selector: str, width: int) -> None:
    """The picture at ``selector`` is decoded and ``width`` pixels wide (tells studies apart)."""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_be_visible()
    expect(page.locator(selector)).to_have_js_property("complete", True)
    expect(page.locator(selector)).to_have_js_property("naturalWidth", width)


def _release(routes: list[Route]) -> None:
    from playwright.sync_api import Error

    for route in routes:
        with contextlib.suppress(Error):  # the page aborted the request: nothing to answer
            route.continue_()
    routes.clear()


def test_switching_studies_never_shows_the_previous_patients_picture(
    world: World, served: str, browser_page: Page
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    chest = seed_study(
        world, patient_name="CHEST^PATIENT", body_part="CHEST", probability=0.9, columns=200
    )
    hand = seed_study(world, patient_name="HAND^PATIENT", probability=0.7)  # 128 wide
    add_user(world, "rad", Role.RADIOLOGIST)
    page.add_init_script(FRAME_RECORDER)
    _sign_in(page, served)

    _go(page, chest.id)
    _expect_shown(page, "#radiograph", 200)
    page.check("#heatmap-toggle")
    _expect_shown(page, "#heatmap", 200)

    # 1. The hand's pictures are slow: nothing of the chest may stay on screen meanwhile.
    held: list[Route] = []
    hand_pictures = f"**/api/studies/{hand.id}/images/*/*.png*"  # with the size asked for
    page.route(hand_pictures, lambda route: held.append(route))
    with page.expect_request(lambda request: f"/studies/{hand.id}/images/" in request.url):
        _go(page, hand.id)
    expect(page.locator("#study-title")).to_have_text("HAND PATIENT")
    expect(page.locator("#heatmap")).to_be_hidden()
    expect(page.locator("#radiograph")).to_have_js_property("naturalWidth", 0)
    page.unroute(hand_pictures)
    _release(held)
    _expect_shown(page, "#radiograph", 128)
    _expect_shown(page, "#heatmap", 128)  # the reader's heat-map choice is kept

    # 2. The chest's heat map answers after the reader has moved on: it is dropped.
    chest_heatmap = f"**/api/studies/{chest.id}/images/*/heatmap.png*"
    page.route(chest_heatmap, lambda route: held.append(route))
    with page.expect_request(
        lambda request: (
            f"/studies/{chest.id}/images/" in request.url and "/heatmap.png?" in request.url
        )
    ):
        _go(page, chest.id)  # the preview is answered; the heat map is asked for and held
    _expect_shown(page, "#radiograph", 200)
    with page.expect_console_message(lambda msg: "dropped" in msg.text):
        _go(page, hand.id)
    _release(held)
    _expect_shown(page, "#radiograph", 128)
    _expect_shown(page, "#heatmap", 128)
    hand_image = str(hand.image_ids[0])
    expect(page.locator("#radiograph")).to_have_attribute("data-image-id", hand_image)
    expect(page.locator("#heatmap")).to_have_attribute("data-image-id", hand_image)
    expect(page.locator("#heatmap")).to_have_attribute("data-study-id", str(hand.id))
    page.screenshot(path=str(ARTIFACTS / "web-switch-study.png"))

    frames = page.evaluate("() => window.__frames")
    after_hand = [f for f in frames if f["after"] == f"#/studies/{hand.id}"]
    assert after_hand
    chest_after_switch = [f for f in after_hand if 200 in (f["radiograph"], f["heatmap"])]
    assert chest_after_switch == [], "the chest's picture was drawn after opening the hand"


def test_an_undecodable_image_shows_a_placeholder_and_its_reason(
    world: World, served: str, browser_page: Page
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    study = seed_study(world, patient_name="THREE^IMAGES", probability=0.85, n_images=3)
    good, bad, no_heat = study.image_ids
    make_undecodable(world, bad, "no pixel data")
    with world.sessions() as session:
        heat_path = session.scalars(
            select(ImagePrediction.heatmap_path).where(ImagePrediction.instance_id == no_heat)
        ).one()
    assert heat_path is not None
    world.store.absolute(heat_path).unlink()  # its heat map is lost; the radiograph is fine
    add_user(world, "rad", Role.RADIOLOGIST)
    _sign_in(page, served)
    _go(page, study.id)
    _expect_shown(page, "#radiograph", 128)
    page.check("#heatmap-toggle")
    _expect_shown(page, "#heatmap", 128)

    page.click(f"#thumbs button[data-image-id='{bad}']")
    placeholder = page.locator("#placeholder")
    expect(placeholder).to_be_visible()
    expect(placeholder).to_contain_text("This image cannot be shown")
    expect(placeholder).to_contain_text("Not analysed: no pixel data")
    expect(page.locator("#radiograph")).to_be_hidden()
    expect(page.locator("#heatmap")).to_be_hidden()
    expect(page.locator("#heatmap-toggle")).to_be_disabled()
    expect(page.locator("#heatmap-toggle")).not_to_be_checked()
    page.screenshot(path=str(ARTIFACTS / "web-undecodable-image.png"))

    page.click(f"#thumbs button[data-image-id='{good}']")
    expect(placeholder).to_be_hidden()
    expect(page.locator("#message")).to_be_hidden()
    _expect_shown(page, "#radiograph", 128)
    expect(page.locator("#radiograph")).to_have_attribute("data-image-id", str(good))
    expect(page.locator("#heatmap-toggle")).to_be_enabled()
    expect(page.locator("#heatmap-toggle")).to_be_checked()
    _expect_shown(page, "#heatmap", 128)

    page.click(f"#thumbs button[data-image-id='{no_heat}']")
    expect(page.locator("#message")).to_contain_text("The heat map cannot be shown")
    _expect_shown(page, "#radiograph", 128)
    expect(page.locator("#radiograph")).to_have_attribute("data-image-id", str(no_heat))
    expect(page.locator("#heatmap")).to_be_hidden()
    expect(page.locator("#heatmap-toggle")).to_be_disabled()
    expect(placeholder).to_be_hidden()


def test_a_double_click_saves_one_review_and_the_history_shows_it(
    world: World, served: str, browser_page: Page
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    study = seed_study(world, patient_name="DOUBLE^CLICK", probability=0.85)
    earlier_reader = add_user(world, "earlier", Role.RADIOLOGIST)
    with world.sessions() as session, session.begin():
        session.add(
            Review(
                study_id=study.id,
                reviewer_id=earlier_reader,
                verdict=Verdict.DISAGREE,
                label=FractureLabel.NOT_FRACTURED,
                comment="first read: no fracture",
                created_at=utcnow() - timedelta(hours=2),
            )
        )
    add_user(world, "rad", Role.RADIOLOGIST)
    _sign_in(page, served)
    _go(page, study.id)
    _expect_shown(page, "#radiograph", 128)
    history = page.locator("#review-history li")
    expect(history).to_have_count(1)
    expect(history.first).to_contain_text("earlier")
    expect(history.first).to_contain_text("disagree, no fracture")
    expect(history.first).to_contain_text("first read: no fracture")

    posts: list[Request] = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
    held: list[Route] = []
    page.route("**/api/studies/*/review", lambda route: held.append(route))
    page.fill("#review-comment", "seen twice")
    with page.expect_request(lambda r: r.method == "POST"):
        page.locator("#agree").dblclick()
    expect(page.locator("#agree")).to_be_disabled()  # locked while the save is in flight
    expect(page.locator("#disagree")).to_be_disabled()
    _release(held)
    expect(page.locator("#message")).to_contain_text("Review saved: agree, fractured")
    expect(page.locator("#agree")).to_be_disabled()  # saved: a new review is a deliberate act
    expect(page.locator("#review-again")).to_be_visible()
    expect(history).to_have_count(2)
    newest = history.first
    expect(newest).to_contain_text("rad")
    expect(newest).to_contain_text("agree, fracture")
    expect(newest).to_contain_text("seen twice")
    expect(newest.locator("time")).to_have_text(
        re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
    )
    page.screenshot(path=str(ARTIFACTS / "web-review-history.png"), full_page=True)

    assert len(posts) == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", posts[0].headers["idempotency-key"])
    with world.sessions() as session:
        saved = session.scalars(select(Review).where(Review.comment == "seen twice")).all()
    assert len(saved) == 1

    page.click("#review-again")
    expect(page.locator("#agree")).to_be_enabled()


def test_a_marked_fracture_cannot_be_sent_as_no_fracture(
    world: World, served: str, browser_page: Page
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    study = seed_study(world, patient_name="MARKED^POINT", probability=0.85)
    add_user(world, "rad", Role.RADIOLOGIST)
    _sign_in(page, served)
    _go(page, study.id)
    _expect_shown(page, "#radiograph", 128)
    disagree = page.locator("#disagree")
    expect(disagree).to_have_text("Disagree: no fracture")
    expect(disagree).to_be_enabled()

    box = page.locator("#radiograph").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    expect(page.locator("#location-text")).to_contain_text("Fracture marked at")
    expect(disagree).to_be_disabled()
    expect(page.locator("#review-hint")).to_be_visible()
    expect(page.locator("#agree")).to_have_text("Agree: fracture")
    expect(page.locator("#agree")).to_be_enabled()
    page.screenshot(path=str(ARTIFACTS / "web-marked-point.png"))

    page.click("#clear-location")
    expect(page.locator("#location-text")).to_have_text("No location marked.")
    expect(disagree).to_be_enabled()
    page.click("#disagree")
    expect(page.locator("#message")).to_contain_text("Review saved: disagree, not fractured")
    with world.sessions() as session:
        review = session.scalars(select(Review)).one()
    assert (review.label, review.location_x, review.instance_id) == ("not_fractured", None, None)
