"""The interactive API documentation (Swagger UI at ``/docs``, ReDoc at ``/redoc``), offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and start Swagger UI with an inline
script: a hospital network often has no internet, and our Content-Security-Policy
(``script-src 'self'``, ``style-src 'self'``) blocks both, which left ``/docs`` blank. Here the
assets come from the ``fastapi-offline`` package (the Swagger UI and ReDoc distributions, served
by this process) and the pages hold no inline script: ``/static/swagger-init.js`` and
``/static/redoc-init.js`` start the viewers, reading the schema's address from ``data-``
attributes.

Swagger UI works under the policy as it is. ReDoc writes its style sheets at run time
(styled-components) and its bundle adds two ``<style>`` elements when it loads, so ``/redoc``
alone allows ``<style>`` elements that carry a fresh per-response nonce (ReDoc's ``nonce``
option puts it on the elements it makes) or that hold exactly those two blocks
(:data:`REDOC_BUNDLE_STYLE_HASHES`); scripts stay ``'self'`` only. The bundle's "API docs by
Redocly" link shows a logo from the internet: the policy blocks it (``img-src``), so the page
asks nothing of the internet and shows the link's text without the logo.
"""

from __future__ import annotations

import secrets
from html import escape
from pathlib import Path
from typing import Final

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.csp import with_inline_styles

#: Where the package keeps ``swagger-ui-bundle.js``, ``swagger-ui.css`` and ``redoc.standalone.js``.
ASSETS_DIR: Final = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL: Final = "/static/api-docs"
DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"

#: CSP hashes of the ``<style>`` blocks ReDoc's bundle (2.5.3, fastapi-offline 1.7.7) adds when
#: it loads, before any option can give them the nonce: an empty one and perfect-scrollbar's CSS.
#: A ReDoc with other blocks makes tests/api/test_docs.py report the violation with its hash.
REDOC_BUNDLE_STYLE_HASHES: Final = (
    "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    "sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc=",
)

_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - Swagger UI</title>
  <link rel="icon" href="{assets}/favicon.png">
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <script src="{assets}/swagger-ui-bundle.js" defer></script>
  <script src="{root}/static/swagger-init.js" defer></script>
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{openapi}"></div>
</body>
</html>
"""

_REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - ReDoc</title>
  <link rel="icon" href="{assets}/favicon.png">
  <script src="{assets}/redoc.standalone.js" defer></script>
  <script src="{root}/static/redoc-init.js" defer></script>
</head>
<body>
  <div id="redoc" data-openapi-url="{openapi}" data-style-nonce="{nonce}"></div>
</body>
</html>
"""


def _page(
    template: str, app: FastAPI, request: Request, *, style_nonce: str | None = None
) -> HTMLResponse:
    root = str(request.scope.get("root_path", ""))
    html = template.format(
        title=escape(app.title),
        root=escape(root),
        assets=escape(root + ASSETS_URL),
        openapi=escape(root + (app.openapi_url or "/openapi.json")),
        nonce=style_nonce or "",
    )
    headers = {"Cache-Control": "no-store"}
    if style_nonce is not None:
        # Set here; the app's middleware only fills in a policy where a response has none.
        headers["Content-Security-Policy"] = with_inline_styles(
            style_nonce, REDOC_BUNDLE_STYLE_HASHES
        )
    return HTMLResponse(html, headers=headers)


def add_api_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from local assets; ``app`` must have FastAPI's own off.

    Call it before mounting anything at ``/static``: the assets are mounted below it.

    Raises
    ------
    ValueError
        When ``app`` still serves FastAPI's CDN-based pages, or has no OpenAPI schema.
    """
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the app with docs_url=None and redoc_url=None")
    if app.openapi_url is None:
        raise ValueError("the API documentation needs the OpenAPI schema (openapi_url)")
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="api-docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return _page(_SWAGGER_PAGE, app, request)

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return _page(_REDOC_PAGE, app, request, style_nonce=secrets.token_hex(16))
