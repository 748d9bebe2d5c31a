"""GET /jobs: the last run and outcome of each scheduled job (`stockcast schedule`)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import EngineDep
from service.api.problems import problem_responses
from service.api.schemas import JobListPublic, JobPublic
from service.db.jobs import last_runs

router = APIRouter(tags=["health"])


@router.get("/jobs", summary="Scheduled jobs", response_model=JobListPublic,
            description="Per job (daily, retrain) its latest run: key, status, detail, runner "
                        "and times, and when it last finished ok.",
            responses=problem_responses(503))
def get_jobs(engine: EngineDep) -> JobListPublic:
    """The scheduler's record, from job_runs."""
    # A database error goes to the problem handler: a fault 503, a missing table not-migrated.
    with engine.connect() as conn:
        runs = last_runs(conn)
    return JobListPublic(jobs=[
        JobPublic(job=run.job, run_key=run.run_key, status=run.status, detail=run.detail,
                  runner=run.runner, started_at=run.started_at, finished_at=run.finished_at,
                  last_ok_at=(runs[f"{job}:ok"].finished_at if f"{job}:ok" in runs else None))
        for job, run in sorted(runs.items()) if not job.endswith(":ok")
    ])
