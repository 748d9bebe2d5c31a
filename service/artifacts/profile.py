"""The training profile an artifact carries: `models/<version>/training_profile.json`, each
feature's range and decile bins over the training segment (service.forecasting.drift). Drift
(PSI) and the predict warning for inputs outside the training range read it.

Like backtest.json it is derived from the model's training data, not part of the model: it is
outside the version hash, names the version and ONNX sha256 it belongs to, and is ignored in
any other artifact.
"""

from __future__ import annotations

import json

from service.artifacts.manifest import Manifest

PROFILE_FILE = "training_profile.json"
PROFILE_FORMAT = 1


def write_profile(manifest: Manifest, features: dict[str, dict], rows: int) -> None:
    """Write a feature_profile of `rows` training rows into the artifact folder."""
    path = manifest.artifact_dir / PROFILE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": PROFILE_FORMAT, "model_version": manifest.version,
                               "onnx_sha256": manifest.onnx_sha256,
                               "segment": [d.isoformat() for d in manifest.split.train],
                               "rows": rows, "features": features}, indent=1) + "\n")
    tmp.replace(path)


def read_profile(manifest: Manifest) -> dict[str, dict] | None:
    """The artifact's feature profile, or None when it has none (or another artifact's)."""
    path = manifest.artifact_dir / PROFILE_FILE
    if not path.is_file():
        return None
    try:
        profile = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if (profile.get("format"), profile.get("model_version"), profile.get("onnx_sha256")) != (
            PROFILE_FORMAT, manifest.version, manifest.onnx_sha256):
        return None
    return profile["features"]
