"""GET /: the web page (static HTML/JS/CSS) that charts bars, indicators, forecasts and backtests.

The page is a plain client of the public API: everything it shows comes from /tickers,
/bars/{ticker}, /predict/{ticker}, /models/current and /metrics/backtest, fetched by the
browser. Plotly.js is served from the `plotly` Python package's bundled file (no CDN: the
service may run offline), gzipped once in memory because it is ~4.8 MB uncompressed.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

import plotly
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

router = APIRouter(include_in_schema=False)


class WholeFile(FileResponse):
    """A file answered whole, 200, whatever Range asks (RFC 9110 §14.2 lets a server ignore
    it; these files are small) and advertised so (`Accept-Ranges: none`). Starlette's
    FileResponse answered an unknown unit (`items=0-1`) or a reversed range 400 and an
    unsatisfiable one 416, in text/plain: an unknown unit must be ignored, and every error
    here is problem+json."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.headers["accept-ranges"] = "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
# Only these names are served from STATIC_DIR: a fixed map, so no path ever reaches the disk.
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# The page's own files change with the code: revalidate every time. Plotly changes only with
# the `plotly` package, so a day's caching saves re-sending megabytes on every visit.
NO_CACHE = {"Cache-Control": "no-cache"}
PLOTLY_CACHE_SECONDS = 86_400


def _accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header accepts gzip (RFC 9110 §12.5.3): named, or `*`, with
    a q-value above 0 (`gzip;q=0` refuses it)."""
    weights = {}
    for item in header.lower().split(","):
        coding, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[coding.strip()] = q
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


@cache
def _plotly_gzip(path: Path) -> bytes:
    """The bundled plotly.min.js, gzipped once per process (~4.8 MB -> ~1.4 MB)."""
    return gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)


@router.get("/", summary="The web page")
async def get_page() -> WholeFile:
    """The single-page explorer."""
    return WholeFile(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers=NO_CACHE)


@router.get("/static/vendor/plotly.min.js", summary="Plotly.js")
def get_plotly(request: Request) -> Response:
    """Plotly.js from the installed `plotly` package, gzipped when the client accepts it."""
    if not PLOTLY_JS.is_file():
        raise HTTPException(404, f"plotly.min.js not found in the plotly package at {PLOTLY_JS}")
    headers = {"Cache-Control": f"public, max-age={PLOTLY_CACHE_SECONDS}",
               "Vary": "Accept-Encoding", "X-Plotly-Package-Version": plotly.__version__}
    if _accepts_gzip(request.headers.get("accept-encoding", "")):
        return Response(_plotly_gzip(PLOTLY_JS), media_type="text/javascript",
                        headers={**headers, "Content-Encoding": "gzip"})
    return WholeFile(PLOTLY_JS, media_type="text/javascript", headers=headers)


@router.get("/static/{name}", summary="The page's script and stylesheet")
async def get_static(name: str) -> WholeFile:
    """app.js or app.css; anything else is 404."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no static file named {name!r}")
    return WholeFile(STATIC_DIR / name, media_type=media_type, headers=NO_CACHE)
