"""The ablation's choice: validation blocks only, the incumbent kept unless beaten beyond noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.evaluation.rolling import SWITCH_T, SegmentScore, ablation_table, choose_feature_set
from service.evaluation.scoring import MODEL, POOLED

DATES = pd.bdate_range("2015-01-02", periods=250)


def _score(name: str, daily_ic: np.ndarray, segment: str = "validation") -> SegmentScore:
    ic = pd.Series(daily_ic, index=DATES)
    rows = [(POOLED, 1, MODEL, "rank_ic_mean", float(ic.mean())),
            (POOLED, 1, MODEL, "rank_ic_t_hac", float(ic.mean() / ic.std() * np.sqrt(len(ic))))]
    metrics = pd.DataFrame(rows, columns=["ticker", "horizon", "method", "metric", "value"])
    return SegmentScore(name, segment, (1, 2), metrics, ic)


def test_a_set_that_beats_the_incumbent_beyond_noise_is_chosen():
    rng = np.random.default_rng(0)
    common = rng.normal(0.0, 0.1, len(DATES))
    scores = {"indicators": _score("indicators", common),
              "returns": _score("returns", common + 0.02 + rng.normal(0, 0.01, len(DATES)))}
    chosen, why = choose_feature_set(scores, "indicators")
    assert chosen == "returns"
    assert "switched" in why and "paired difference HAC t" in why


def test_the_incumbent_stays_when_the_gain_is_noise():
    rng = np.random.default_rng(1)
    common = rng.normal(0.0, 0.1, len(DATES))
    noise = rng.normal(0, 0.1, len(DATES))
    gain = noise - noise.mean() + 0.001  # higher mean, paired t far below SWITCH_T
    scores = {"indicators": _score("indicators", common),
              "+market": _score("+market", common + gain)}
    assert scores["+market"].value("rank_ic_mean") > scores["indicators"].value("rank_ic_mean")
    chosen, why = choose_feature_set(scores, "indicators")
    assert chosen == "indicators"
    assert f"≤ {SWITCH_T:g}: not told from noise" in why
    # The best set being the incumbent keeps it too; an unknown incumbent is an error.
    assert choose_feature_set({"indicators": scores["indicators"]}, "indicators")[0] == (
        "indicators")
    with pytest.raises(ValueError, match="was not evaluated"):
        choose_feature_set(scores, "returns")


def test_the_table_marks_the_chosen_set():
    wiggle = 1e-3 * np.sin(np.arange(len(DATES)))
    scores = [_score("indicators", 0.01 + wiggle), _score("returns", 0.02 + wiggle, "test")]
    table = ablation_table(scores, "returns")
    assert "| indicators | validation | 1–2 | 0.0100 |" in table
    assert "| **returns** | test | 1–2 | 0.0200 |" in table
