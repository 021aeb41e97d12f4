"""The API documentation pages work with no internet and under the Content-Security-Policy.

FastAPI's own ``/docs`` loads Swagger UI from a CDN and starts it with an inline script; behind
our CSP that is a blank page. These tests open ``/docs`` and ``/redoc`` in headless Chromium with
every request that would leave this machine refused, and check that the operations are shown,
that nothing reached for the internet, that the policy blocked nothing else, and that the pages
still send it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.csp import CONTENT_SECURITY_POLICY, with_inline_styles
from api.docs import ASSETS_URL, REDOC_BUNDLE_STYLE_HASHES
from gateway.http import ApiServer
from tests.api.world import World
from tests.helpers.tools import require_program

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page, Request, Response, Route

CHROMIUM = "/usr/bin/chromium"
EXPECT_TIMEOUT_MS = 30_000
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
#: ReDoc's bundle shows this logo beside its "API docs by Redocly" link; the policy blocks it.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def operation_count(app: FastAPI) -> int:
    """How many operations the schema has."""
    return sum(len(operations) for operations in app.openapi()["paths"].values())


def tagged_operation_count(app: FastAPI) -> int:
    """How many operation blocks Swagger UI shows: an operation appears under each of its tags."""
    return sum(
        max(1, len(operation.get("tags", [])))
        for operations in app.openapi()["paths"].values()
        for operation in operations.values()
    )


def redoc_nonce(html: str) -> str:
    match = re.search(r'data-style-nonce="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def test_pages_have_no_inline_script_or_style_and_send_the_policy(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        response = client.get(path)
        assert response.status_code == 200
        html = response.text
        policy = response.headers["content-security-policy"]
        if path == "/docs":
            assert policy == CONTENT_SECURITY_POLICY
        else:
            assert policy == with_inline_styles(redoc_nonce(html), REDOC_BUNDLE_STYLE_HASHES)
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
        assert scripts, path
        assert all('src="' in attributes and not body.strip() for attributes, body in scripts)
        assert "<style" not in html
        assert "style=" not in html
        assert "http://" not in html, f"{path} names another host"
        assert "https://" not in html, f"{path} names another host"
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
            served = client.get(asset)
            assert served.status_code == 200, asset
            assert served.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_redoc_gets_a_fresh_style_nonce_and_no_script_relaxation(client: TestClient) -> None:
    first, second = client.get("/redoc"), client.get("/redoc")
    assert redoc_nonce(first.text) != redoc_nonce(second.text)
    policy = first.headers["content-security-policy"]
    assert f"'nonce-{redoc_nonce(first.text)}'" in policy
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy


def test_assets_come_from_the_package(client: TestClient) -> None:
    bundle = client.get(f"{ASSETS_URL}/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert "javascript" in bundle.headers["content-type"]
    assert "SwaggerUIBundle" in bundle.text
    assert "Redoc" in client.get(f"{ASSETS_URL}/redoc.standalone.js").text
    assert client.get(f"{ASSETS_URL}/swagger-ui.css").headers["content-type"].startswith("text/css")


def test_the_old_cdn_pages_are_gone(app: FastAPI) -> None:
    assert app.docs_url is None
    assert app.redoc_url is None
    html = TestClient(app).get("/docs").text
    assert "cdn.jsdelivr.net" not in html


@pytest.fixture
def served(world: World) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(world.settings, world.sessions, store=world.store)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = ApiServer(uvicorn.Server(config))
    server.start()
    yield f"http://127.0.0.1:{server.port}", app
    server.stop()


class OfflinePage:
    """A Chromium page that refuses every request leaving this machine and records them all.

    ``outside`` lists requests for other hosts that reached the network stack (and were refused
    there); ``blocked`` those the page's policy stopped before they were sent.
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.outside: list[str] = []
        self.blocked: list[str] = []
        self.csp_violations: list[str] = []
        self.errors: list[str] = []
        self.documents: dict[str, dict[str, str]] = {}
        page.route("**/*", self._route)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("response", self._response)
        page.on("requestfailed", self._failed)

    def _route(self, route: Route, request: Request) -> None:
        if urlsplit(request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.outside.append(request.url)
            route.abort("internetdisconnected")

    def _failed(self, request: Request) -> None:
        if request.failure == "csp":
            self.blocked.append(request.url)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)

    def _response(self, response: Response) -> None:
        if response.request.resource_type == "document":
            self.documents[urlsplit(response.url).path] = response.all_headers()


@pytest.fixture
def offline_page() -> Iterator[OfflinePage]:
    require_program(CHROMIUM)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield OfflinePage(browser.new_page(viewport={"width": 1280, "height": 900}))
        finally:
            browser.close()


@pytest.mark.integration
def test_swagger_ui_lists_every_operation_offline(
    served: tuple[str, FastAPI], offline_page: OfflinePage
) -> None:
    from playwright.sync_api import expect

    base, app = served
    page = offline_page.page
    page.goto(f"{base}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("fracture-gateway")
    operations = page.locator(".opblock")
    expect(operations).to_have_count(tagged_operation_count(app))
    expect(page.locator(".opblock-summary-path", has_text="/api/health")).to_be_visible()
    # An operation opens, with its parameters and responses.
    page.locator(".opblock-summary", has_text="/api/health").first.click()
    expect(page.locator(".opblock.is-open .responses-wrapper")).to_be_visible()

    assert offline_page.documents["/docs"]["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert offline_page.outside == []
    assert offline_page.blocked == []
    assert offline_page.csp_violations == []
    assert offline_page.errors == []


@pytest.mark.integration
def test_redoc_renders_offline(served: tuple[str, FastAPI], offline_page: OfflinePage) -> None:
    from playwright.sync_api import expect

    base, app = served
    page = offline_page.page
    page.goto(f"{base}/redoc")
    expect(page.locator("h1")).to_contain_text("fracture-gateway")
    # One section per operation under each of its tags, each with its path shown.
    sections = page.locator("[data-section-id^='tag/'][data-section-id*='/operation/']")
    expect(sections).to_have_count(tagged_operation_count(app))
    health = page.locator("[data-section-id='tag/system/operation/health_api_health_get']")
    expect(health).to_contain_text("/api/health")
    expect(health.locator("h2")).to_be_visible()

    policy = offline_page.documents["/redoc"]["content-security-policy"]
    nonce = page.locator("#redoc").get_attribute("data-style-nonce") or ""
    assert policy == with_inline_styles(nonce, REDOC_BUNDLE_STYLE_HASHES)
    assert offline_page.outside == []
    # The one thing blocked is ReDoc's logo from the internet, stopped before it was sent.
    assert offline_page.blocked == [REDOC_LOGO]
    assert len(offline_page.csp_violations) == 1
    assert REDOC_LOGO in offline_page.csp_violations[0]
    assert offline_page.errors == []
