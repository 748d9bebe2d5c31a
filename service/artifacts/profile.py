"""The training profile an artifact carries: `models/<version>/training_profile.json`, each
feature's range and decile bins over the training segment (service.forecasting.drift). Drift
(PSI) and the predict warning for inputs outside the training range read it.

Like backtest.json it is derived from the model's training data, not part of the model: it is
outside the version hash, names the version and ONNX sha256 it belongs to, and is ignored in
any other artifact.
"""

from __future__ import annotations

import json
import math

from service.artifacts.manifest import Manifest

PROFILE_FILE = "training_profile.json"
PROFILE_FORMAT = 1
# A profile recomputed from the same bars on another CPU differs in the last bits (pandas'
# rolling sums, ≈ 1e-14 relative); within this it is the same profile and the file is kept, so
# `make run` (seed) and `stockcast backtest` leave a checkout's shipped artifact as it was.
_SAME_RTOL = 1e-9


def same_json(a, b, rel_tol: float) -> bool:
    """The same JSON value, floats equal to `rel_tol` (null only to null): whether a derived
    file the artifact carries (this profile, the backtest report's figures) holds what a rerun
    would write."""
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, int | float) and isinstance(b, int | float)
                and math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-300))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y, rel_tol) for x, y in zip(a, b))
    return a == b


def write_profile(manifest: Manifest, features: dict[str, dict], rows: int) -> None:
    """Write a feature_profile of `rows` training rows into the artifact folder (kept as it is
    when the one there is the same profile to _SAME_RTOL)."""
    path = manifest.artifact_dir / PROFILE_FILE
    profile = json.loads(json.dumps({  # as written and read back
        "format": PROFILE_FORMAT, "model_version": manifest.version,
        "onnx_sha256": manifest.onnx_sha256,
        "segment": [d.isoformat() for d in manifest.split.train],
        "rows": rows, "features": features}))
    try:
        if same_json(json.loads(path.read_text()), profile, _SAME_RTOL):
            return
    except (OSError, ValueError):  # none yet, or unreadable: write it
        pass
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(profile, indent=1) + "\n")
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
