"""stockcast: stock-price forecasts served from an ONNX model over a cached bar store."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed stockcast distribution's version (pyproject.toml); "0+unknown" if absent."""
    # Read on call, not at import: the metadata lookup costs tens of milliseconds.
    try:
        return version("stockcast")
    except PackageNotFoundError:
        return "0+unknown"
