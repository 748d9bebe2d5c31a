"""RFC 9457 problem details for every error response; never a stack trace.

FastAPI answers errors with {"detail": ...} as application/json by itself; the handlers here
replace that for HTTPException, request validation and each typed StockcastError, a lost
database connection wherever it surfaces (503, like DatabaseUnavailable), a missing table (503
database-not-migrated, after checking the revision); service.api.middleware answers anything
else with a 500 that logs the traceback server-side only.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.schemas import FieldError, Problem
from service.core.errors import (
    DatabaseNotMigrated,
    DatabaseUnavailable,
    InsufficientHistory,
    InvalidTicker,
    ManifestMismatch,
    ModelNotLoaded,
    SchemaIncomplete,
    ServerBusy,
    SourceCoolingDown,
    SourceUnavailable,
    StockcastError,
    UnknownTicker,
)
from service.core.tickers import clipped, normalize_ticker
from service.db.health import (
    is_database_fault,
    is_missing_schema,
    missing_object,
    unavailable,
)

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Seconds a client should wait before retrying a 503 from a failed upstream source / database.
SOURCE_RETRY_AFTER = 60
DATABASE_RETRY_AFTER = 1
BUSY_RETRY_AFTER = 1  # ... and a server whose forecast lane had no turn free in time


class ProblemResponse(JSONResponse):
    """A JSONResponse with the problem+json media type."""

    media_type = PROBLEM_MEDIA_TYPE


class InvalidField(StockcastError):
    """A request input that passed the schema but not a runtime check (e.g. the model's horizon)."""

    def __init__(self, field: str, location: str, message: str):
        self.field, self.location, self.message = field, location, message
        super().__init__(f"{field}: {message}")


def query_ticker(raw: str) -> str:
    """A ticker query parameter normalized; an invalid one is the 422 any query parameter's
    check gives (type validation, location query), as /source's; an InvalidTicker alone
    says location path."""
    try:
        return normalize_ticker(raw)
    except InvalidTicker as exc:
        raise InvalidField("ticker", "query", str(exc)) from exc


# Typed error -> (status, type URI, title). Subclasses come before their bases.
ERROR_PROBLEMS: dict[type[StockcastError], tuple[int, str, str]] = {
    InvalidTicker: (422, "urn:stockcast:problem:invalid-ticker", "Invalid ticker"),
    InvalidField: (422, "urn:stockcast:problem:validation", "Invalid request"),
    UnknownTicker: (404, "urn:stockcast:problem:unknown-ticker", "Unknown ticker"),
    InsufficientHistory: (422, "urn:stockcast:problem:insufficient-history",
                          "Insufficient history"),
    SourceUnavailable: (503, "urn:stockcast:problem:source-unavailable",
                        "Bar source unavailable"),
    DatabaseUnavailable: (503, "urn:stockcast:problem:database-unavailable",
                          "Database unavailable"),
    DatabaseNotMigrated: (503, "urn:stockcast:problem:database-not-migrated",
                          "Database not migrated"),
    ModelNotLoaded: (503, "urn:stockcast:problem:model-not-loaded", "No model loaded"),
    ServerBusy: (503, "urn:stockcast:problem:busy", "Server busy"),
    ManifestMismatch: (500, "urn:stockcast:problem:model-invalid", "Model artifact invalid"),
}


# The request path an answer names (`instance`) is clipped here: a 60,000-character path was
# echoed whole in every 4xx (found by review).
MAX_INSTANCE_CHARS = 256
# Field errors a 422 lists (the rest counted in its detail).
MAX_FIELD_ERRORS = 20


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> ProblemResponse:
    """Serialize a Problem (members left None are omitted; `instance` clipped)."""
    body = problem.model_dump(mode="json", exclude_none=True)
    if len(body.get("instance", "")) > MAX_INSTANCE_CHARS:
        body["instance"] = body["instance"][:MAX_INSTANCE_CHARS] + "..."
    return ProblemResponse(body, status_code=problem.status, headers=headers)


def error_problem(exc: StockcastError, instance: str | None = None) -> Problem:
    """The Problem for a typed error (its status, type and title; its message as detail)."""
    for cls in type(exc).__mro__:
        if cls in ERROR_PROBLEMS:
            status, type_, title = ERROR_PROBLEMS[cls]
            break
    else:
        status, type_, title = 500, "urn:stockcast:problem:internal", "Internal server error"
    problem = Problem(type=type_, title=title, status=status, detail=str(exc), instance=instance)
    if isinstance(exc, InsufficientHistory):
        problem.ticker, problem.n_bars, problem.needed = exc.ticker, exc.n_bars, exc.needed
    elif isinstance(exc, InvalidTicker):
        problem.errors = [FieldError(field="ticker", location="path", message=str(exc))]
    elif isinstance(exc, InvalidField):
        problem.detail = f"{exc.field}: {exc.message}"
        problem.errors = [FieldError(field=exc.field, location=exc.location,
                                     message=exc.message)]
    return problem


def _field_error(error: dict) -> FieldError:
    loc = [str(part) for part in error.get("loc", ())]
    location = loc[0] if loc and loc[0] in ("path", "query", "body", "header", "cookie") else "body"
    field = clipped(".".join(loc[1:]) or location)  # an unknown field is named by the client
    message = error.get("msg", "invalid")
    cause = (error.get("ctx") or {}).get("error")
    if error.get("type") == "value_error" and cause is not None:
        message = str(cause)  # our own message, without pydantic's "Value error, " prefix
    return FieldError(field=field, location=location, message=message)


def body_too_large_problem(limit: int, instance: str | None = None) -> Problem:
    """413: the body is over STOCKCAST_MAX_BODY_BYTES (refused before it is read in full)."""
    return Problem(type="urn:stockcast:problem:body-too-large", title="Content too large",
                   status=413, detail=f"the request body exceeds {limit} bytes",
                   instance=instance)


def internal_problem(instance: str | None = None) -> Problem:
    """500 for an unexpected error: the traceback is logged, never returned."""
    return Problem(type="urn:stockcast:problem:internal", title="Internal server error",
                   status=500, detail="an unexpected error occurred; it has been logged",
                   instance=instance)


def unsupported_media_type_problem(content_type: str | None,
                                   instance: str | None = None) -> Problem:
    """415: a body sent without a JSON Content-Type (application/json or any */*+json)."""
    sent = f"got {content_type!r}" if content_type else "none was sent"
    return Problem(type="urn:stockcast:problem:unsupported-media-type",
                   title="Unsupported Media Type", status=415,
                   detail=f"the body must be JSON: send Content-Type: application/json ({sent})",
                   instance=instance)


async def _validation_handler(request: Request, exc: RequestValidationError) -> ProblemResponse:
    if isinstance(exc.body, bytes) and exc.body:
        # FastAPI parses a body as JSON only when its Content-Type says JSON (a missing one
        # too: strict_content_type); any other reaches validation as raw bytes, whatever the
        # fields' errors say. An empty body is the route's default, under any Content-Type.
        return problem_response(unsupported_media_type_problem(
            request.headers.get("content-type"), request.url.path))
    malformed = [e for e in exc.errors() if e.get("type") == "json_invalid"]
    if malformed:  # not JSON at all: the schema documents 400, not a field's 422
        cause = (malformed[0].get("ctx") or {}).get("error", "JSON decode error")
        return problem_response(Problem(
            type="urn:stockcast:problem:malformed-body", title="Bad Request", status=400,
            detail=f"the body is not valid JSON: {cause}", instance=request.url.path))
    # At most MAX_FIELD_ERRORS listed: 30,000 unknown keys in a 930 KB body were answered with
    # 30,000 errors, each key in `detail` too (4.8 MB; found by a hostile pass).
    found = exc.errors()
    errors = [_field_error(e) for e in found[:MAX_FIELD_ERRORS]]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    if len(found) > MAX_FIELD_ERRORS:
        detail += f"; and {len(found) - MAX_FIELD_ERRORS} more errors not listed"
    return problem_response(Problem(
        type="urn:stockcast:problem:validation", title="Invalid request", status=422,
        detail=detail, instance=request.url.path, errors=errors))


# FastAPI's own 400 for a JSON body that json.loads raised on other than a JSONDecodeError
# (which reaches _validation_handler as json_invalid): not UTF-8, nested past the recursion
# limit, an integer over Python's 4,300 digits.
_BODY_PARSE_ERROR = "There was an error parsing the body"


def _undecodable(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "it is nested too deeply"
    return str(cause) if cause is not None else "it could not be decoded"


async def _http_handler(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
    if exc.status_code == 413:  # middleware.BodyLimit, counting a chunked body as it is read
        limit = request.app.state.settings.max_body_bytes
        return problem_response(body_too_large_problem(limit, request.url.path))
    if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:  # as json_invalid's 400
        return problem_response(Problem(
            type="urn:stockcast:problem:malformed-body", title="Bad Request", status=400,
            detail=f"the body is not valid JSON: {_undecodable(exc.__cause__)}",
            instance=request.url.path))
    title = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405 and headers:
        headers = {k: _with_head(v) if k.lower() == "allow" else v for k, v in headers.items()}
    return problem_response(
        Problem(type="about:blank", title=title, status=exc.status_code, detail=detail,
                instance=request.url.path),
        headers=headers)


def _with_head(allow: str) -> str:
    """A 405's Allow with HEAD after GET: middleware.HeadAsGet answers HEAD wherever GET is."""
    methods = [m.strip() for m in allow.split(",") if m.strip()]
    if "GET" in methods and "HEAD" not in methods:
        methods.insert(methods.index("GET") + 1, "HEAD")
    return ", ".join(methods)


_RETRY_AFTER = {SourceUnavailable: SOURCE_RETRY_AFTER, DatabaseUnavailable: DATABASE_RETRY_AFTER,
                DatabaseNotMigrated: DATABASE_RETRY_AFTER, ServerBusy: BUSY_RETRY_AFTER}


async def _not_migrated(request: Request, exc: BaseException) -> DatabaseNotMigrated | None:
    """For an error that says a table is missing: the revision, read now, if it is not head;
    SchemaIncomplete (the same 503) if it is."""
    schema = getattr(request.app.state, "schema", None)
    if schema is None or not is_missing_schema(exc):
        return None
    try:
        await run_in_threadpool(schema.check)
    except StockcastError:
        return None
    if schema.migrated:  # at head, yet a table is gone (dropped after the migration)
        log.warning("%s %s: schema at head but incomplete: %s", request.method,
                    request.url.path, exc)
        return SchemaIncomplete(schema.head, missing_object(exc))
    return DatabaseNotMigrated(schema.current, schema.head)


async def _stockcast_handler(request: Request, exc: StockcastError) -> ProblemResponse:
    if isinstance(exc, DatabaseUnavailable):
        exc = await _not_migrated(request, exc) or exc
    problem = error_problem(exc, request.url.path)
    if problem.status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, problem.status, exc)
    retry = next((s for cls, s in _RETRY_AFTER.items() if isinstance(exc, cls)), None)
    if isinstance(exc, SourceCoolingDown):  # the breaker knows when it asks again
        retry = max(1, math.ceil(exc.retry_after))
    return problem_response(problem, {"Retry-After": str(retry)} if retry else None)


async def _database_handler(request: Request, exc: DBAPIError) -> ProblemResponse:
    # A route that reads the DB without going through the bar cache (which raises
    # DatabaseUnavailable itself) still answers the database outage, not a 500; a missing
    # table is a database not migrated (dropped and recreated, say), also not a 500.
    not_migrated = await _not_migrated(request, exc)
    if not_migrated is not None:
        return await _stockcast_handler(request, not_migrated)
    if not is_database_fault(exc):
        raise exc  # a bug: the catch-all's 500
    return await _stockcast_handler(request, unavailable(exc))


def register_problem_handlers(app: FastAPI) -> None:
    """Install the problem+json handlers on an app (unexpected errors: middleware.CatchAll)."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(StockcastError, _stockcast_handler)
    app.add_exception_handler(DBAPIError, _database_handler)


def problem_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries documenting problem+json bodies for these statuses."""
    descriptions = {
        400: "The body could not be parsed (not JSON, not UTF-8, or nested too deeply).",
        413: "The body is larger than STOCKCAST_MAX_BODY_BYTES (default 1 MiB).",
        415: "A body whose Content-Type is not JSON (application/json), or that has none.",
        401: "Missing or wrong X-API-Key.",
        404: "Unknown ticker (the source has no bars for it) or nothing matches.",
        409: "The new model could not be loaded; the previous one keeps serving.",
        422: "Invalid input (the offending field is named) or too little history.",
        500: "Unexpected error (logged; no stack trace is returned).",
        503: "No model loaded, database unreachable or not migrated, source down with "
             "nothing cached, or the server too busy to start this forecast in time.",
    }
    return {
        status: {
            "model": Problem,
            "description": descriptions.get(status, HTTPStatus(status).phrase),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
