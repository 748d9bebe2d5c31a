"""ASGI middleware: refuse an oversized body before reading it; answer an unexpected error with a
problem+json 500 that leaves the keep-alive connection usable; answer HEAD as GET without its body.

Starlette's ServerErrorMiddleware re-raises after sending its 500, and uvicorn then closes the
connection without `Connection: close`: a client's next request on it fails. The catch-all here
sits inside it and does not re-raise.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import body_too_large_problem, internal_problem, problem_response

log = logging.getLogger(__name__)


class HeadAsGet:
    """HEAD answered as the GET it asks about, without the body: the same status and headers
    (RFC 9110 §9.3.2; uptime checkers and load balancers probe `HEAD /healthz`). The routes
    declare GET only, and FastAPI answered HEAD 405 on every one of them."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class BodyTooLarge(HTTPException):
    """Raised while reading a body past the limit (the problem handlers answer 413)."""

    def __init__(self):
        super().__init__(413, "request body too large")


class TrackedSend:
    """An ASGI send that remembers whether the response has started (then no other can)."""

    def __init__(self, send: Send):
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class BodyLimit:
    """413 problem+json for a body over `max_body_bytes`, before it is read in full.

    A declared Content-Length over the limit is answered at once, whatever the route, without
    reading a byte; a body without one (chunked) is counted as it is read and refused at the
    first chunk past the limit. (FastAPI's own `max_body_size` answers text/plain.)
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        tracked = TrackedSend(send)

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counted_receive, tracked)
        except BodyTooLarge:  # read outside FastAPI's body parsing (its handlers answer there)
            if tracked.started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = body_too_large_problem(self.max_body_bytes, scope.get("path"))
        await problem_response(problem)(scope, receive, send)


class CatchAll:
    """Any exception the handlers left: logged with its traceback, answered 500 problem+json."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if tracked.started:  # half a response is out: only closing the connection can end it
                raise
            await problem_response(internal_problem(scope.get("path")))(scope, receive, send)
