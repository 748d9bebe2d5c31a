"""One wording of a reversed date range (calendar.check_date_range), in every command."""

from __future__ import annotations

import datetime as dt

import pytest

from service.evaluation.rolling import plan_blocks
from service.forecasting.calendar import check_date_range

D = dt.date


@pytest.mark.parametrize(("start", "end"), [
    (D(2017, 1, 1), D(2017, 1, 1)), (D(2017, 1, 1), D(2018, 1, 1)), (None, D(2017, 1, 1)),
    (D(2017, 1, 1), None), (None, None)])
def test_a_range_in_order_or_open_passes(start, end):
    assert check_date_range(start, end) is None


def test_a_reversed_range_is_said_in_one_wording_by_every_caller():
    with pytest.raises(ValueError) as direct:
        check_date_range(D(2018, 1, 1), D(2017, 1, 1))
    with pytest.raises(ValueError) as rolling:
        plan_blocks([D(2017, 1, 3)], D(2018, 1, 1), D(2017, 1, 1), retrain_every=5)
    assert str(direct.value) == str(rolling.value) == "start 2018-01-01 is after end 2017-01-01"
