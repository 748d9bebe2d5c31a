"""The API's routers, one module each; `JsonRoute` is the route class of those that take a body."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class Utf8JsonRequest(Request):
    """A request whose JSON body must be UTF-8 (RFC 8259 §8.1: JSON between systems is UTF-8).

    Starlette hands the bytes to `json.loads`, which also detects UTF-16 and UTF-32 and decodes
    them: such a body was answered as if it were UTF-8. Here the bytes are decoded as UTF-8
    first (a leading UTF-8 byte order mark ignored, as the RFC allows), so a UTF-16/32 body
    fails as any other non-UTF-8 body does: FastAPI's parse error, which `problems` answers as
    the documented 400 `malformed-body` ("it is not UTF-8 ...").
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads((await self.body()).decode("utf-8-sig"))
        return self._json


class JsonRoute(APIRoute):
    """An APIRoute reading its body through `Utf8JsonRequest` (FastAPI's custom-request recipe)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def utf8_handler(request: Request) -> Response:
            return await handler(Utf8JsonRequest(request.scope, request.receive))

        return utf8_handler
