"""The training entry point under torchrun: 2 CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from service.artifacts.manifest import CURRENT_FILE, load_manifest
from service.core.config import PROJECT_ROOT
from tests.api_factories import store_bars
from tests.tiny_model import synthetic_bars_multi, tiny_config


@pytest.mark.slow
def test_two_cpu_ranks_end_with_identical_weights(tmp_path):
    url = f"sqlite:///{tmp_path / 'bars.db'}"
    store_bars(url, synthetic_bars_multi(), reset=True)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(epochs=2, threads=None).to_dict()))
    models = tmp_path / "models"
    env = {**os.environ, "STOCKCAST_DATABASE_URL": url, "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "service.cli", "train", "--config", str(config), "--model-dir", str(models), "--no-progress",
         # rank 0 gates the export; a threshold any model passes, so current moves to it
         "--max-rel-mae", "100", "--plots-dir", str(tmp_path / "plots")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]

    digests = dict(re.findall(r"rank (\d) weights sha256 ([0-9a-f]{64})", output))
    assert set(digests) == {"0", "1"}, output[-4000:]
    assert digests["0"] == digests["1"]

    # Rank 0 alone exported, and what it exported is those weights.
    artifacts = [p for p in models.iterdir() if p.is_dir()]
    assert len(artifacts) == 1
    assert (models / CURRENT_FILE).read_text().strip() == artifacts[0].name
    manifest = load_manifest(artifacts[0])
    assert manifest.training["world_size"] == 2
    assert manifest.training["weights_sha256"] == digests["0"]
