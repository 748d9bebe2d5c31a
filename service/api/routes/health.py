"""GET /healthz (the process answers) and GET /readyz (model, database and provider checks)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from service.api.deps import EngineDep, ModelSlotDep, SettingsDep
from service.api.problems import problem_response, problem_responses
from service.api.schemas import CheckPublic, HealthPublic, Problem, ReadinessPublic
from service.core.errors import DatabaseUnavailable
from service.db.health import ping
from service.inference.onnx_model import CUDA

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", summary="Liveness", response_model=HealthPublic,
            description="Answers as long as the process serves HTTP, even while forecasts "
                        "are being computed; checks nothing else.")
async def get_health() -> HealthPublic:
    """The process is alive (no I/O: the event loop answers this directly)."""
    return HealthPublic()


@router.get(
    "/readyz",
    summary="Readiness",
    description=("200 when a model is loaded, the database answers `select 1`, its schema is "
                 "at this code's Alembic head, and (with STOCKCAST_ORT_PROVIDER=cuda) "
                 "onnxruntime actually runs on CUDA; otherwise 503 with the failed checks in "
                 "`checks`. Each database check is bounded (a silent database fails it within "
                 "about 2 s). A newer `models/current` that failed to load is named in the "
                 "model check while the old model serves; details are short and carry no "
                 "paths (the full reason is in the server log)."),
    response_model=ReadinessPublic,
    responses=problem_responses(503),
)
def get_readiness(request: Request, settings: SettingsDep, engine: EngineDep,
                  models: ModelSlotDep):
    """Run every readiness check; 503 problem+json naming the failed ones."""
    checks: dict[str, CheckPublic] = {}
    loaded = models.current
    if loaded is None:
        checks["model"] = CheckPublic(ok=False, detail=models.public_error or "no model loaded")
    elif models.public_error:  # a newer models/current failed to load; this one keeps serving
        checks["model"] = CheckPublic(
            ok=True, detail=f"{loaded.version}; the last load failed: {models.public_error}")
    else:
        checks["model"] = CheckPublic(ok=True, detail=loaded.version)
    schema = request.app.state.schema
    try:
        ping(engine)
        checks["database"] = CheckPublic(ok=True, detail="select 1 answered")
    except DatabaseUnavailable as exc:
        log.warning("readiness: %s", exc)
        checks["database"] = CheckPublic(ok=False, detail=str(exc))
        checks["schema"] = CheckPublic(ok=False, detail="not checked: database unavailable")
    else:
        try:
            current = schema.check()
            checks["schema"] = CheckPublic(
                ok=schema.migrated,
                detail=(f"at {current} (head)" if schema.migrated else
                        f"database not migrated (at {current or 'no revision'}, "
                        f"need {schema.head})"))
        except DatabaseUnavailable as exc:
            log.warning("readiness: %s", exc)
            checks["schema"] = CheckPublic(ok=False, detail=str(exc))
    requested = settings.ort_provider
    if loaded is None:
        checks["provider"] = CheckPublic(ok=False, detail=f"requested {requested}; no session")
    else:
        active = loaded.predictor.model.active_providers
        # ORT falls back to CPU silently when CUDA cannot load: an explicit cuda request that
        # did not take is not ready.
        ok = requested != "cuda" or CUDA in active
        checks["provider"] = CheckPublic(
            ok=ok, detail=f"requested {requested}; active {', '.join(active)}")
    failed = [name for name, check in checks.items() if not check.ok]
    if failed:
        log.info("not ready (%s): %s", ", ".join(failed), models.error or "")
        return problem_response(Problem(
            type="urn:stockcast:problem:not-ready", title="Not ready", status=503,
            detail=f"failed checks: {', '.join(failed)}", instance=request.url.path,
            checks=checks))
    return ReadinessPublic(checks=checks)
