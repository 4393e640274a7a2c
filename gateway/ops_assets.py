"""The ops page's files (gateway/static/), read once and served from memory with their headers.

Every asset URL in the page carries its content hash (``ops/static/ops.js?v=1a2b3c4d5e6f``), so
an asset fetched with the current hash is cached for a year (``immutable``) and a new release is
fetched at once; any other request for it is revalidated (``no-cache`` + ``ETag``). The page
itself and the data are never stored (``no-store``: they are behind the operator token).

The Content-Security-Policy allows nothing but this gateway's own scripts, styles and fetches:
no inline script or style, no frames, no forms, no other origin (uPlot draws on a canvas and
sets element styles through the DOM, which ``style-src 'self'`` permits).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

#: The page's files, packaged with the gateway (pyproject.toml package-data).
STATIC: Final = Path(__file__).parent / "static"
#: The page, served at ``/ops`` (not under ``ops/static/``).
PAGE: Final = "ops.html"
#: The version of the vendored uPlot (gateway/static/vendor/, from ``npm pack uplot``).
UPLOT_VERSION: Final = "1.6.32"

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Headers of every ``/ops`` answer, refusals included.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
NO_STORE: Final = "no-store"
#: An asset requested with its current hash never changes.
IMMUTABLE: Final = "private, max-age=31536000, immutable"
#: Any other asset request: may be cached, but asked again each time (answered 304 when equal).
REVALIDATE: Final = "private, no-cache"
#: ``src="ops/static/x"`` and ``href="ops/static/x"`` in the page, given their hash on load.
_ASSET_REF = re.compile(r'((?:src|href)="ops/static/)([^"?]+)"')


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    version: str  # the first 12 hex digits of its SHA-256

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def _asset(path: Path) -> Asset:
    body = path.read_bytes()
    return Asset(body, CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                 hashlib.sha256(body).hexdigest()[:12])


class Assets:
    """The page and its static files (relative names such as ``vendor/uPlot.iife.min.js``)."""

    def __init__(self, root: Path = STATIC) -> None:
        self.files = {
            path.relative_to(root).as_posix(): _asset(path)
            for path in sorted(root.rglob("*")) if path.is_file() and path.name != PAGE
        }
        self.page = self._versioned_page((root / PAGE).read_text(encoding="utf-8"))

    def _versioned_page(self, html: str) -> bytes:
        def versioned(match: re.Match[str]) -> str:
            name = match.group(2)
            if name not in self.files:
                raise FileNotFoundError(f"{PAGE} refers to ops/static/{name}, which is not in {STATIC}")
            return f'{match.group(1)}{name}?v={self.files[name].version}"'

        return _ASSET_REF.sub(versioned, html).encode()

    def page_response(self) -> web.Response:
        return web.Response(body=self.page, headers={
            **SECURITY_HEADERS, "Content-Type": CONTENT_TYPES[".html"], "Cache-Control": NO_STORE,
        })

    def asset_response(self, request: web.Request, name: str) -> web.Response:
        """``ops/static/<name>`` (404 for anything not shipped: no path ever reaches the disk)."""
        asset = self.files.get(name)
        if asset is None:
            raise web.HTTPNotFound(headers=SECURITY_HEADERS)
        cache = IMMUTABLE if request.query.get("v") == asset.version else REVALIDATE
        headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": asset.etag}
        if asset.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
