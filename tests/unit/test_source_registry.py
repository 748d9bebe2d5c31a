"""The source registry: STOCKCAST_SOURCE names a registered source, and nothing else works."""

from __future__ import annotations

import pytest

from service.core.config import Settings
from service.sources.base import SOURCES, BarSource, make_source


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_registered_source_is_made_by_its_name(name, tmp_path):
    source = make_source(Settings(_env_file=None, source=name,
                                  yfinance_cache_dir=tmp_path / "yfinance"))
    assert isinstance(source, BarSource)
    assert source.name == name


def test_an_unregistered_source_is_refused_naming_the_choices():
    with pytest.raises(ValueError) as err:
        make_source(Settings(_env_file=None, source="bloomberg"))
    assert str(err.value) == "unknown bar source 'bloomberg': use one of 'yfinance', 'none'"
