"""A seed ensemble: one network is today's artifact; N are averaged in one graph served as one."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from service.artifacts.manifest import META_FILE, ONNX_FILE, load_manifest
from service.inference.onnx_model import OnnxModel
from service.inference.predictor import Predictor
from tests.tiny_model import synthetic_bars_multi, tiny_config
from training.config import TrainConfig
from training.ensemble import fit_members
from training.export import export_artifact
from training.model import ExportedForecaster, QuantileEnsemble
from training.pipeline import train_and_export
from training.train import fit, weights_sha256

BARS = synthetic_bars_multi()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Today's path: fit, then export (what train_and_export did before members existed)."""
    result = fit(tiny_config(), BARS)
    return result, export_artifact(result.model, result.prepared, result.record,
                                   tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    config = tiny_config(members=3, seed=4)
    return config, train_and_export(config, BARS, tmp_path_factory.mktemp("ensemble"))


def test_members_1_is_todays_artifact(single, tmp_path):
    result, artifact = single
    again = train_and_export(tiny_config(members=1), BARS, tmp_path)
    meta, before = (json.loads((a / META_FILE).read_text()) for a in (again, artifact))
    assert meta["training"]["weights_sha256"] == before["training"]["weights_sha256"] == (
        result.weights_sha256)
    assert (again / ONNX_FILE).read_bytes() == (artifact / ONNX_FILE).read_bytes()
    assert again.name == artifact.name
    assert meta["training"]["config"]["members"] == 1 and "members" not in meta["training"]
    props = {p.key for p in onnx.load(again / ONNX_FILE).metadata_props}
    assert "stockcast.members" not in props


def test_the_ensembles_graph_averages_its_members_and_keeps_quantiles_sorted(ensemble):
    config, artifact = ensemble
    members = [fit(config.with_(seed=config.seed + i, members=1), BARS) for i in range(3)]
    prepared = members[0].prepared
    val = prepared.val
    windows, ids = val.windows[:33], val.ticker_ids[:33].copy()
    ids[:3] = [0, 99, -1]  # unknown ids take the unknown row in every member
    with torch.no_grad():
        outputs = [ExportedForecaster.of(r.model, prepared).eval()(
            torch.from_numpy(windows), torch.from_numpy(ids)).numpy() for r in members]
    got = OnnxModel.load(artifact, provider="cpu").run(windows, ids)
    np.testing.assert_allclose(got, np.mean(outputs, axis=0), atol=1e-5, rtol=1e-5)
    assert np.all(np.diff(got, axis=-1) >= 0)
    # Not one member's forecast: the seeds learned different networks.
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-4
    assert np.abs(got - outputs[0]).max() > 1e-5
    meta = json.loads((artifact / META_FILE).read_text())
    assert meta["training"]["config"]["members"] == 3
    assert [m["seed"] for m in meta["training"]["members"]] == [4, 5, 6]
    assert [m["weights_sha256"] for m in meta["training"]["members"]] == [
        r.weights_sha256 for r in members]
    assert [m["seed"] for m in meta["run"]["members"]] == [4, 5, 6]
    ensemble_digest = weights_sha256(QuantileEnsemble([r.model for r in members]))
    assert meta["training"]["weights_sha256"] == ensemble_digest
    props = {p.key: p.value for p in onnx.load(artifact / ONNX_FILE).metadata_props}
    assert props["stockcast.members"] == "3"


def test_the_ensemble_artifact_has_the_same_inputs_and_outputs_and_serves(single, ensemble):
    _, one = single
    _, many = ensemble
    meta_one, meta_many = (json.loads((a / META_FILE).read_text()) for a in (one, many))
    assert meta_many["onnx"]["inputs"] == meta_one["onnx"]["inputs"]
    assert meta_many["onnx"]["outputs"] == meta_one["onnx"]["outputs"]
    assert meta_many["model"] == meta_one["model"]  # each member's network
    assert TrainConfig.from_dict(meta_many["training"]["config"]).members == 3
    predictor = Predictor.load(many, "cpu")
    assert predictor.manifest.version == many.name == load_manifest(many).version
    bars = BARS[BARS["ticker"] == "AAA"].drop(columns="ticker").reset_index(drop=True)
    forecast = predictor.forecast("AAA", bars, horizon=5)
    assert forecast.model_version == many.name and len(forecast.steps) == 5


def test_members_must_be_positive_and_one_member_fits_as_before():
    with pytest.raises(ValueError, match="members must be >= 1"):
        tiny_config(members=0)
    result = fit_members(tiny_config(epochs=1), BARS)
    assert result.weights_sha256 == fit(tiny_config(epochs=1), BARS).weights_sha256
    with pytest.raises(ValueError, match="differ in their network config"):
        QuantileEnsemble([fit(tiny_config(epochs=1), BARS).model,
                          fit(tiny_config(epochs=1, hidden_size=4), BARS).model])


def test_members_prepared_from_other_data_are_not_averaged(single):
    import dataclasses

    from service.forecasting.scaling import StandardScaler
    from training.ensemble import _check_same_data

    prepared = single[0].prepared
    _check_same_data(prepared, prepared)
    shifted = StandardScaler(prepared.target_scaler.mean + 1.0, prepared.target_scaler.std)
    for other in (dataclasses.replace(prepared, target_scaler=shifted),
                  dataclasses.replace(prepared, vocab=prepared.vocab[::-1])):
        with pytest.raises(RuntimeError, match="cannot be averaged"):
            _check_same_data(prepared, other)
