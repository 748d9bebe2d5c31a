"""GET /models/current: what is served, from which artifact, on which onnxruntime providers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.api.deps import LoadedModelDep
from service.api.model_slot import LoadedModel
from service.api.problems import problem_responses
from service.api.schemas import ModelPublic
from service.core.errors import DatabaseUnavailable

router = APIRouter(prefix="/models", tags=["models"])


def model_public(loaded: LoadedModel) -> ModelPublic:
    """The summary of a loaded model."""
    manifest = loaded.predictor.manifest
    model = loaded.predictor.model
    spec = manifest.spec
    return ModelPublic(
        version=manifest.version,
        created_at=manifest.created_at,
        loaded_at=loaded.loaded_at,
        features=list(spec.features),
        window=spec.window,
        horizon=spec.horizon,
        quantiles=list(spec.quantiles),
        vocab_size=len(manifest.ticker_vocab),
        tickers=list(manifest.tickers),
        split=manifest.split.to_dict(),
        metrics=manifest.metrics,
        onnx_sha256=manifest.onnx_sha256,
        requested_provider=model.requested_provider,
        active_providers=model.active_providers,
    )


@router.get("/current", summary="The served model", response_model=ModelPublic,
            description="Version, feature spec, training tickers, split date ranges, "
                        "validation metrics, the active onnxruntime providers "
                        "(`session.get_providers()`, not merely the available ones) and the "
                        "per-feature drift (PSI) of recent sessions against training.",
            responses=problem_responses(503))
async def get_current_model(loaded: LoadedModelDep, request: Request) -> ModelPublic:
    """Describe the model now served (503 problem+json when none is loaded)."""
    public = model_public(loaded)
    try:  # drift is computed from the cached bars (at most every few minutes)
        public.drift = await run_in_threadpool(request.app.state.drift.get,
                                               loaded.predictor.manifest)
    except (SQLAlchemyError, DatabaseUnavailable, ValueError):  # the guard's timeouts too
        public.drift = None
    return public
