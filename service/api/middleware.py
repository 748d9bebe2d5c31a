"""ASGI middleware: refuse an oversized body before reading it; answer an unexpected error with a
problem+json 500 that leaves the keep-alive connection usable.

Starlette's ServerErrorMiddleware re-raises after sending its 500, and uvicorn then closes the
connection without `Connection: close`: a client's next request on it fails. The catch-all here
sits inside it and does not re-raise.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import body_too_large_problem, internal_problem, problem_response

log = logging.getLogger(__name__)


class ContentLengthLimit:
    """413 at once for a declared Content-Length over the limit, whatever the route.

    A body sent without a length (chunked) is counted while it is read, by FastAPI's own
    `max_body_size` (its 413 goes through the problem handlers).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                response = problem_response(
                    body_too_large_problem(self.max_body_bytes, scope.get("path")))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CatchAll:
    """Any exception the handlers left: logged with its traceback, answered 500 problem+json."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # half a response is out: only closing the connection can end it
                raise
            await problem_response(internal_problem(scope.get("path")))(scope, receive, send)
