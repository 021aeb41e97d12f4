"""The web page end to end in headless Chromium: log in, open a study, heat map, review."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvicorn
from sqlalchemy import select

from api.app import create_app
from db.review import Review, Role
from gateway.http import ApiServer
from tests.api.world import PASSWORD, World, add_user, seed_study
from tests.helpers.tools import require_program

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


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
            expect(page.locator("#location-text")).to_contain_text("Fracture marked at x 32")
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
