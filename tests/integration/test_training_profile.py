"""The training profile an artifact carries: written with its backtest, read by drift (PSI) and
by the predictor, whose forecasts warn when their input window leaves the training range."""

from __future__ import annotations

import json

import pandas as pd
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.api.main import create_app
from service.artifacts.manifest import load_manifest
from service.artifacts.profile import PROFILE_FILE, read_profile
from service.cli import app
from service.inference.predictor import Predictor
from tests.api_factories import api_settings


def backtested_artifact(cli_env, tmp_path):
    artifact = cli_env.model_dir / (cli_env.model_dir / "current").read_text().strip()
    out = CliRunner().invoke(app, ["backtest", "--horizons", "1", "--plots-dir",
                                   str(tmp_path / "plots")])
    assert out.exit_code == 0, out.output
    return artifact


def test_the_backtest_writes_the_training_profile_the_predictor_checks(cli_env, tmp_path,
                                                                      tiny_artifact):
    artifact = backtested_artifact(cli_env, tmp_path)
    assert (artifact / PROFILE_FILE).is_file()
    manifest = load_manifest(artifact)
    profile = read_profile(manifest)
    assert sorted(profile) == sorted(manifest.spec.features)
    assert all(len(e["shares"]) == len(e["edges"]) + 1 for e in profile.values())
    predictor = Predictor.load(artifact, "cpu")
    assert predictor.training_profile == profile

    bars = tiny_artifact.bars
    aaa = bars[bars["ticker"] == "AAA"].drop(columns="ticker").reset_index(drop=True)
    # As of the training segment's end, the window holds training rows only: no range
    # warning; the one warning says the origin is in-sample.
    inside = predictor.forecast("AAA", aaa, 1, as_of=manifest.split.train[1])
    assert len(inside.warnings) == 1
    assert inside.warnings[0].startswith(f"as_of {manifest.split.train[1]} is inside the period")
    # A volume 50 times the usual on the last day is outside anything seen in training.
    spiked = aaa.copy()
    spiked.loc[spiked.index[-1], "volume"] = int(spiked["volume"].median() * 50)
    outside = predictor.forecast("AAA", spiked, 1)
    assert len(outside.warnings) == 1
    assert outside.warnings[0].startswith(
        "the input window of AAA lies outside the training range")
    assert "volume_z" in outside.warnings[0]


def test_served_drift_uses_the_artifacts_profile(cli_env, tmp_path):
    backtested_artifact(cli_env, tmp_path)
    settings = api_settings(cli_env.url, cli_env.model_dir)
    with TestClient(create_app(settings)) as client:
        drift = client.get("/models/current").json()["drift"]
    assert drift["reference"] == "training profile (artifact)"
    assert drift["recent_sessions"] == 60
    assert all(pd.notna(v) and v >= 0 for v in drift["psi"].values())


def test_a_profile_recomputed_to_the_last_bits_leaves_the_file_as_it_was(cli_env, tmp_path):
    """Another CPU's pandas sums differ at ~1e-14: the same profile, so the shipped artifact's
    file (tracked in git) is not rewritten by `make run`'s seed or a backtest; a real change
    (another bin edge) is written."""
    from service.artifacts.profile import write_profile

    artifact = backtested_artifact(cli_env, tmp_path)
    manifest = load_manifest(artifact)
    path = artifact / PROFILE_FILE
    written = path.read_bytes()
    profile = read_profile(manifest)
    rows = json.loads(written)["rows"]
    first = next(iter(profile))
    nudged = {f: dict(e, edges=[x * (1 + 1e-14) for x in e["edges"]]) for f, e in profile.items()}
    write_profile(manifest, nudged, rows)
    assert path.read_bytes() == written
    moved = dict(nudged, **{first: dict(profile[first],
                                        edges=[x + 0.01 for x in profile[first]["edges"]])})
    write_profile(manifest, moved, rows)
    assert read_profile(manifest)[first]["edges"] == moved[first]["edges"]
    write_profile(manifest, profile, rows + 1)  # another row count: written too
    assert json.loads(path.read_text())["rows"] == rows + 1
