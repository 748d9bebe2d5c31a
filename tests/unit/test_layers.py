"""The layer contract (pyproject's [tool.importlinter], docs/architecture.md) holds, and breaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from service.core.config import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy under test shadows the checkout
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_every_import_contract_is_kept():
    out = _lint_imports(PROJECT_ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in out.stdout


def test_an_import_up_the_layers_breaks_the_contract(tmp_path):
    # A copy of the packages where the ground floor imports the API: lint-imports must fail.
    ignore = shutil.ignore_patterns("__pycache__", "static", "templates")
    for package in ("service", "training"):
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    tickers = tmp_path / "service" / "core" / "tickers.py"
    tickers.write_text(tickers.read_text() + "\nfrom service.api import schemas  # noqa\n")

    out = _lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout[-4000:]
    assert "Layers: imports point down BROKEN" in out.stdout
    assert "service.core.tickers -> service.api.schemas" in out.stdout
