"""Loading an artifact: a manifest that disagrees with this code fails with a clear message."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from service.artifacts.manifest import (
    artifact_path,
    artifact_version,
    load_manifest,
    reband,
    resolve_current,
    set_current,
)
from service.core.config import PROJECT_ROOT
from service.core.errors import ManifestMismatch, ModelNotLoaded
from service.forecasting.bands import ACISettings
from service.forecasting.spec import FEATURE_NAMES, FeatureSpec
from service.inference.onnx_model import OnnxModel
from service.inference.predictor import Predictor


@pytest.fixture
def artifact(tiny_artifact, tmp_path):
    """A private copy of the tiny artifact that a test may edit."""
    target = tmp_path / "models" / tiny_artifact.artifact_dir.name
    shutil.copytree(tiny_artifact.artifact_dir, target)
    return target


def _edit_meta(artifact, **changes):
    meta = json.loads((artifact / "meta.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            meta[section][field] = value
        else:
            meta[section] = value
    (artifact / "meta.json").write_text(json.dumps(meta))
    return meta


def _rehashed(artifact, **changes):
    """An edited artifact exported honestly: its version derived again, its folder renamed."""
    meta = _edit_meta(artifact, **changes)
    meta["version"] = artifact_version((artifact / "model.onnx").read_bytes(), meta)
    (artifact / "meta.json").write_text(json.dumps(meta))
    return artifact.rename(artifact.parent / meta["version"])


def test_load_manifest_reads_spec_scalers_vocabulary_and_split(artifact, tiny_artifact):
    manifest = load_manifest(artifact)
    prepared = tiny_artifact.result.prepared
    assert manifest.version == artifact.name
    assert manifest.spec == FeatureSpec(window=20, horizon=5)
    np.testing.assert_array_equal(manifest.feature_scaler.mean, prepared.feature_scaler.mean)
    np.testing.assert_array_equal(manifest.target_scaler.std, prepared.target_scaler.std)
    assert manifest.split == prepared.split
    assert manifest.tickers == ("AAA", "BBB", "CCC")
    assert [manifest.ticker_id(t) for t in ("AAA", "CCC", "MSFT")] == [1, 3, 0]
    assert manifest.seen_in_training("BBB") and not manifest.seen_in_training("MSFT")
    assert manifest.summary()["window"] == 20


def test_features_of_another_code_version_are_refused_by_name(artifact):
    old = ["log_return", "rsi14", "sma20_ratio"]
    _edit_meta(artifact, spec__features=old)
    with pytest.raises(ManifestMismatch) as err:
        load_manifest(artifact)
    assert str(err.value) == (
        f"artifact {artifact.name} was built for features {old} "
        f"but this code computes {list(FEATURE_NAMES)}"
    )


def test_reordered_features_are_refused(artifact):
    _edit_meta(artifact, spec__features=list(reversed(FEATURE_NAMES)))
    with pytest.raises(ManifestMismatch, match="was built for features"):
        load_manifest(artifact)


def test_feature_version_mismatch_is_refused(artifact):
    _edit_meta(artifact, spec__version=99)
    with pytest.raises(ManifestMismatch) as err:
        load_manifest(artifact)
    assert str(err.value) == (
        f"artifact {artifact.name} was built with feature version 99 "
        "but this code computes feature version 2"
    )


def test_expected_window_is_checked_when_given(artifact):
    assert load_manifest(artifact, expected=FeatureSpec(window=20, horizon=5)).spec.window == 20
    with pytest.raises(ManifestMismatch) as err:
        load_manifest(artifact, expected=FeatureSpec())
    assert str(err.value) == f"artifact {artifact.name} was built for window 20 but this code expects 60"


def test_onnx_file_that_does_not_match_its_hash_is_refused(artifact):
    with open(artifact / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestMismatch, match=r"model.onnx has sha256 [0-9a-f]{12}… but meta.json "
                                                r"records [0-9a-f]{12}…"):
        load_manifest(artifact)


def test_missing_artifact_is_model_not_loaded(tmp_path):
    with pytest.raises(ModelNotLoaded, match=f"no model artifact at {tmp_path}: meta.json is missing"):
        load_manifest(tmp_path)


def test_predictor_refuses_a_graph_that_disagrees_with_meta(artifact):
    artifact = _rehashed(artifact, ticker_vocab=["<unknown>", "AAA"])
    manifest = load_manifest(artifact)
    model = OnnxModel.load(artifact, provider="cpu")
    with pytest.raises(ManifestMismatch) as err:
        Predictor(model, manifest)
    assert str(err.value) == (
        "model.onnx (window, features, horizon, quantiles, tickers) = (20, 14, 5, 7, 4) "
        f"but artifact {artifact.name}'s meta says (20, 14, 5, 7, 2)"
    )


def test_resolve_current_follows_the_pointer_file(artifact):
    models = artifact.parent
    with pytest.raises(ModelNotLoaded, match="no .*current: train a model"):
        resolve_current(models)
    set_current(models, artifact.name)
    assert resolve_current(models) == artifact
    (models / "current").write_text("nope\n")
    with pytest.raises(ModelNotLoaded, match="names 'nope', which is not a folder"):
        resolve_current(models)


def test_reband_writes_the_same_weights_with_another_band_as_a_new_version(artifact):
    models = artifact.parent
    set_current(models, artifact.name)
    before = {p.name: p.read_bytes() for p in artifact.iterdir() if p.is_file()}
    band = {"served": "model_aci", "aci": ACISettings(calibration=300, vol_beta=0.5).to_dict()}
    new = reband(models, artifact.name, band)
    assert new.parent == models and new.name != artifact.name
    manifest = load_manifest(new)  # verifies as its own content hash
    assert manifest.band == band
    assert Predictor.load(new).band_settings == ACISettings(calibration=300, vol_beta=0.5)
    assert (new / "model.onnx").read_bytes() == before["model.onnx"]
    old_meta, new_meta = json.loads(before["meta.json"]), json.loads((new / "meta.json").read_text())
    assert {k for k in old_meta if old_meta[k] != new_meta[k]} == {
        "band", "version", "created_at", "run"}
    assert new_meta["run"]["rebanded_from"] == artifact.name
    # The source and `current` are left as they were; the same band again is the same folder.
    assert {p.name: p.read_bytes() for p in artifact.iterdir() if p.is_file()} == before
    assert resolve_current(models) == artifact
    written = (new / "meta.json").read_bytes()
    assert reband(models, artifact.name, band) == new
    assert (new / "meta.json").read_bytes() == written
    # Its own band again: the source itself, untouched.
    assert reband(models, artifact.name, json.loads(before["meta.json"])["band"]) == artifact
    assert (artifact / "meta.json").read_bytes() == before["meta.json"]


# -- the version is the content hash, verified on every load -----------------------------------


def test_the_shipped_artifact_verifies_as_its_content_hash():
    pointer = PROJECT_ROOT / "models" / "current"
    version = pointer.read_text().strip()
    meta = json.loads((PROJECT_ROOT / "models" / version / "meta.json").read_text())
    onnx = (PROJECT_ROOT / "models" / version / "model.onnx").read_bytes()
    assert artifact_version(onnx, meta) == meta["version"] == version
    assert load_manifest(resolve_current(PROJECT_ROOT / "models")).version == version


def test_a_tampered_meta_is_refused_naming_the_hash_it_has(artifact):
    meta = json.loads((artifact / "meta.json").read_text())
    shifted = [m + 0.5 for m in meta["feature_scaler"]["mean"]]
    meta = _edit_meta(artifact, feature_scaler__mean=shifted)
    content = artifact_version((artifact / "model.onnx").read_bytes(), meta)
    with pytest.raises(ManifestMismatch) as err:
        load_manifest(artifact)
    assert str(err.value) == (
        f"artifact {artifact.name}: its content hashes to {content}, not to its version; "
        "meta.json or model.onnx was changed after export (refused)")


def test_a_tampered_onnx_with_its_sha_rewritten_in_meta_is_refused(artifact):
    import hashlib

    onnx = (artifact / "model.onnx").read_bytes() + b"\0"
    (artifact / "model.onnx").write_bytes(onnx)
    _edit_meta(artifact, onnx__sha256=hashlib.sha256(onnx).hexdigest())
    with pytest.raises(ManifestMismatch, match="its content hashes to [0-9a-f]{12}, not to its "
                                               "version"):
        load_manifest(artifact)


@pytest.mark.parametrize(("key", "value", "described"), [
    ("metrics", "x", "an object"),
    ("metrics", None, "an object"),
    ("training", [1, 2], "an object"),
    ("band", "model_aci", "an object"),
    ("created_at", 5, "a string or null"),  # outside the hash: an edit keeps the version
])
def test_an_optional_section_of_the_wrong_type_is_refused(artifact, key, value, described):
    """Loaded and ready, then GET /models/current was a 500 for as long as it served (found by
    a hostile ops pass); now refused as any bad meta edit: a reload 409, the old model kept."""
    rehashed = _rehashed(artifact, **{key: value})
    with pytest.raises(ManifestMismatch) as err:
        load_manifest(rehashed)
    assert str(err.value) == (f"artifact {rehashed.name}: meta.json's {key} is not {described} "
                              f"(got {type(value).__name__}; refused)")


_ACI = ACISettings().to_dict()


@pytest.mark.parametrize(("band", "why"), [
    ({"served": "model_aci", "aci": 3}, "band.aci is not an object (got int"),
    ({"aci": [0.005, 100]}, "band.aci is not an object (got list"),
    ({"aci": {**_ACI, "har": 3}}, "band.aci.har is not an object or null (got int"),
    ({"aci": {**_ACI, "har": [1, 2]}}, "band.aci.har is not an object or null (got list"),
    ({"aci": {"gamma": 0.005}}, "band.aci cannot be read (KeyError: 'lookback'"),
    ({"aci": {**_ACI, "gamma": 2}},
     "band.aci cannot be read (ValueError: gamma must be in (0, 1), got 2.0"),
    ({"aci": {**_ACI, "har": {"coef": 1, "c": 1}}},
     "band.aci cannot be read (TypeError: 'int' object is not iterable"),
    # read loosely before: "no" was two-sided, 1.5 a lookback of 1, "0.005" a gamma
    ({"aci": {**_ACI, "two_sided": "no"}},
     "band.aci cannot be read (TypeError: two_sided must be true or false, got 'no'"),
    ({"aci": {**_ACI, "lookback": 1.5}},
     "band.aci cannot be read (ValueError: lookback must be an integer, got 1.5"),
    ({"aci": {**_ACI, "gamma": "0.005"}},
     "band.aci cannot be read (ValueError: gamma must be a finite number, got '0.005'"),
    ({"aci": {**_ACI, "vol_beta": True}},
     "band.aci cannot be read (ValueError: vol_beta must be a finite number, got True"),
    ({"served": 5}, "band.served is not a string (got int"),
    ({"served": "bogus_aci"},
     "band.served 'bogus_aci' names no band (known: model_aci, ewma_aci, empirical_aci"),
])
def test_a_band_the_predictor_cannot_read_is_refused(artifact, band, why):
    """band.aci (and its har) are read as mappings and band.served names a forecaster: an aci
    of 3 raised AttributeError on load (the model watch logged it, a reload was a 500), an
    unknown served name a KeyError on every forecast (found by a hostile ops pass)."""
    rehashed = _rehashed(artifact, band=band)
    with pytest.raises(ManifestMismatch) as err:
        load_manifest(rehashed)
    assert str(err.value) == f"artifact {rehashed.name}: meta.json's {why}; refused)"


@pytest.mark.parametrize("band", [{}, {"served": "ewma_aci"}, {"aci": None}, {"aci": {}},
                                  {"aci": {**_ACI, "har": None}}])
def test_a_band_without_aci_settings_loads_with_the_defaults(artifact, band):
    manifest = load_manifest(_rehashed(artifact, band=band))
    assert manifest.band == band


def test_optional_sections_may_be_absent_or_null_where_the_api_allows(artifact):
    meta = json.loads((artifact / "meta.json").read_text())
    for key in ("metrics", "training", "band"):
        meta.pop(key, None)
    meta["created_at"] = meta["package_version"] = None
    meta["version"] = artifact_version((artifact / "model.onnx").read_bytes(), meta)
    (artifact / "meta.json").write_text(json.dumps(meta))
    manifest = load_manifest(artifact.rename(artifact.parent / meta["version"]))
    assert (manifest.metrics, manifest.training, manifest.band, manifest.created_at) == (
        {}, {}, {}, None)


def test_an_artifact_copied_under_another_name_is_refused(artifact):
    renamed = artifact.rename(artifact.parent / "latest")
    with pytest.raises(ManifestMismatch) as err:
        load_manifest(renamed)
    assert str(err.value) == (f"artifact {artifact.name} lies in a folder named 'latest'; "
                              "a version is served only from its own folder")


@pytest.mark.parametrize("name", ["../models", "..", "/etc", "a/b", "", ".hidden", "x\0y",
                                  "v" * 65])
def test_versions_name_folders_inside_the_model_directory_only(artifact, name):
    models = artifact.parent
    with pytest.raises(ModelNotLoaded, match="is not a model version"):
        artifact_path(models, name)
    (models / "current").write_text(name + "\n")
    with pytest.raises(ModelNotLoaded):
        resolve_current(models)
    with pytest.raises(ModelNotLoaded):
        set_current(models, name)


def test_a_symlinked_version_leading_outside_is_refused(artifact, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(artifact, outside)
    (artifact.parent / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelNotLoaded, match="resolves outside the model directory"):
        artifact_path(artifact.parent, "linked")
