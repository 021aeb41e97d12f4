"""The Content-Security-Policy every response carries: pages load only this server's files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

#: The web page loads only its own files; images are shown from blob: URLs.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

_NONCE = re.compile(r"^[A-Za-z0-9]{16,}$")
_HASH = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")


def with_inline_styles(nonce: str, hashes: Iterable[str] = ()) -> str:
    """The policy, with ``<style>`` elements allowed that carry ``nonce`` or have one of ``hashes``.

    For a page whose library writes its style sheets at run time (ReDoc): scripts stay
    ``'self'`` only, and no other inline style is allowed (CSP Level 3, ``style-src``).

    Raises
    ------
    ValueError
        When the nonce is shorter than 16 letters and digits, or a hash is not ``sha256-...``.
    """
    if not _NONCE.match(nonce):
        raise ValueError(f"a CSP nonce is at least 16 letters and digits, got {nonce!r}")
    sources = [f"'nonce-{nonce}'"]
    for value in hashes:
        if not _HASH.match(value):
            raise ValueError(f"not a base64 SHA-256 CSP hash source: {value!r}")
        sources.append(f"'{value}'")
    return CONTENT_SECURITY_POLICY.replace(
        "style-src 'self';", f"style-src 'self' {' '.join(sources)};", 1
    )
