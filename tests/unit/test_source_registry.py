"""The source registry: STOCKCAST_SOURCE names a registered source, and nothing else works."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from service.core.config import Settings, SourceName
from service.sources.base import SOURCES, BarSource, make_source


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_registered_source_is_made_by_its_name(name, tmp_path):
    source = make_source(Settings(_env_file=None, source=name,
                                  yfinance_cache_dir=tmp_path / "yfinance"))
    assert isinstance(source, BarSource)
    assert source.name == name


def test_the_settings_accept_exactly_the_registered_sources():
    assert set(get_args(SourceName)) == set(SOURCES)


def test_an_unregistered_source_is_refused_by_the_settings_naming_the_choices():
    """Refused when the settings load, before anything starts (serve failed in its lifespan)."""
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None, source="bloomberg")
    assert [(e["loc"], e["msg"]) for e in err.value.errors()] == [
        (("source",), "Input should be 'yfinance' or 'none'")]


def test_an_unregistered_source_slipped_past_the_settings_is_refused_naming_the_choices():
    with pytest.raises(ValueError) as err:
        make_source(Settings(_env_file=None).model_copy(update={"source": "bloomberg"}))
    assert str(err.value) == "unknown bar source 'bloomberg': use one of 'yfinance', 'none'"
