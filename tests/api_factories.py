"""Building the real app for tests: seeded database, tiny model, scripted source, real server."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Self

import pandas as pd
import uvicorn

from service.core.config import Settings
from service.db.bars import upsert_bars
from service.db.session import make_engine, reset_database
from service.sources.market import update_market

# The tiny model's synthetic bars (tests.tiny_model) end on Wednesday 2021-05-19; on Thursday
# evening the cache expects nothing newer, so cached tickers are served without a fetch.
LAST_BAR = dt.date(2021, 5, 19)
NOW = dt.datetime(2021, 5, 20, 21, 0, tzinfo=dt.UTC)
API_KEY = "test-admin-key"


class Clock:
    """A settable UTC clock for the bar cache."""

    def __init__(self, now: dt.datetime = NOW):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def store_bars(url: str, bars_multi: pd.DataFrame, *, reset: bool = False) -> None:
    """Upsert a multi-ticker bars frame into the database at url (migrated, or reset=True to
    drop every table and migrate it first)."""
    if reset:
        reset_database(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            upsert_bars(conn, bars_multi, source="test")
            update_market(conn)  # as the bar write path keeps it
    finally:
        engine.dispose()


def api_settings(url: str, model_dir: Path, **changes) -> Settings:
    """Settings of a test app: its own DB and models, an admin key, CPU onnxruntime.

    Every request checks the DB for new bars (no shared check), a source failure does not
    silence the source for later requests (no cool-down), and models/current is not watched
    (a test's reload sees the change first), unless a test asks for them.
    """
    values = {"database_url": url, "model_dir": model_dir, "api_key": API_KEY, "source": "none",
              "ort_provider": "cpu", "ort_intra_op_threads": 1, "bar_check_ttl_seconds": 0.0,
              "source_cooldown_seconds": 0.0, "model_check_interval_seconds": 0.0}
    values.update(changes)
    return Settings(**values)


def copy_models(artifact_dir: Path, into: Path, variant: str | None = None,
                point_current: bool = True) -> Path:
    """A models folder holding a copy of one artifact, current -> it (unless `point_current` is
    False); returns the copy's folder. `current` is written atomically, as promotion does: a
    watching server never reads it half-written.

    With `variant`, the copy is another artifact: meta.json gains {"variant": variant} and the
    version (its content hash, verified on load) and folder name are derived again, so the
    server sees a different model with the same weights.
    """
    import json

    from service.artifacts.manifest import artifact_version, set_current

    into.mkdir(parents=True, exist_ok=True)
    name = artifact_dir.name
    meta = json.loads((artifact_dir / "meta.json").read_text())
    if variant is not None:
        meta["variant"] = variant
        name = meta["version"] = artifact_version((artifact_dir / "model.onnx").read_bytes(), meta)
    target = into / name
    shutil.copytree(artifact_dir, target)
    (target / "meta.json").write_text(json.dumps(meta))
    if point_current:
        set_current(into, name)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn server on 127.0.0.1 in a background thread (for concurrency tests)."""

    def __init__(self, app):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
