"""POST /admin/reload: load models/current again and swap it in without dropping requests."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import ApiKeyDep, ModelSlotDep
from service.api.problems import error_problem, problem_response, problem_responses
from service.api.schemas import ReloadPublic
from service.core.errors import ManifestMismatch, ModelNotLoaded

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[ApiKeyDep])


@router.post(
    "/reload",
    summary="Reload the model",
    description=("Reads `models/current` again, loads that artifact (a new onnxruntime session "
                 "and manifest) and swaps it in with one reference assignment: requests in "
                 "flight finish on the model they started with. If the new artifact cannot be "
                 "loaded, the previous model keeps serving and the answer is 409. Needs the "
                 "`X-API-Key` header (401 without it; 503 when no key is configured). This "
                 "reaches only the worker that answers it, at once; every worker also loads a "
                 "changed `models/current` by itself within "
                 "`STOCKCAST_MODEL_CHECK_INTERVAL_SECONDS` (default 2 s)."),
    response_model=ReloadPublic,
    responses=problem_responses(401, 409, 503),
)
def reload_model(request: Request, models: ModelSlotDep):
    """Load the artifact named by models/current and serve it."""
    previous = models.current
    try:
        loaded = models.load()
    except (ModelNotLoaded, ManifestMismatch) as exc:
        problem = error_problem(exc, request.url.path)
        kept = previous.version if previous is not None else "none"
        problem.status, problem.title = 409, "Reload failed"
        problem.detail = f"{exc}; still serving model {kept}"
        return problem_response(problem)
    # The slot's on_load has cleared the forecast cache and updated the metrics.
    return ReloadPublic(previous_version=previous.version if previous else None,
                        version=loaded.version,
                        changed=previous is None or previous.version != loaded.version)
