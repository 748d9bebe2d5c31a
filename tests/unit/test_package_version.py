"""One package version: the installed distribution's, shown by the API and written into artifacts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version as installed_version

from service import package_version
from service.core.config import PROJECT_ROOT


def test_package_version_is_the_installed_distributions():
    assert package_version() == installed_version("stockcast")


def test_package_version_without_an_installed_distribution_is_unknown(tmp_path):
    # A bare copy of the package, run with -S (no site-packages) from a folder without the
    # checkout's egg-info: no stockcast metadata anywhere on sys.path.
    (tmp_path / "service").mkdir()
    shutil.copy(PROJECT_ROOT / "service" / "__init__.py", tmp_path / "service" / "__init__.py")
    code = "import service; print(service.package_version())"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert out.stdout.strip() == "0+unknown"


def test_the_api_and_the_artifact_export_use_the_one_function():
    import training.export
    from service.api import main

    assert main.package_version is package_version
    assert training.export.package_version is package_version
    assert not hasattr(main, "_package_version") and not hasattr(training.export,
                                                                  "_package_version")
    assert main.create_app().version == package_version()
