"""The network: output shapes, monotone quantiles, the pinball loss, unknown-id clamping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import ModelConfig
from training.model import ExportedForecaster, QuantileLSTM, monotone_quantiles, pinball_loss


def small_model(n_tickers: int = 5, quantiles=(0.1, 0.5, 0.9)) -> QuantileLSTM:
    torch.manual_seed(0)
    return QuantileLSTM(ModelConfig(
        n_features=10, n_tickers=n_tickers, horizon=7, quantiles=quantiles, hidden_size=8,
        num_layers=2, dropout=0.2, embedding_dim=3, head_hidden=12)).eval()


def test_forward_shape_is_batch_horizon_quantiles():
    model = small_model()
    out = model(torch.randn(4, 15, 10), torch.tensor([0, 1, 2, 4]))
    assert out.shape == (4, 7, 3)


@pytest.mark.parametrize("median_index", [0, 1, 2, 4])
def test_monotone_quantiles_are_sorted_even_for_extreme_raw_outputs(median_index):
    raw = torch.randn(64, 7, 5) * torch.tensor([1.0, 50.0, 1e4, 0.01, 200.0])
    q = monotone_quantiles(raw, median_index)
    assert q.shape == raw.shape
    # The median passes through untouched; everything else is offset from it.
    torch.testing.assert_close(q[..., median_index], raw[..., median_index])
    assert (q[..., 1:] >= q[..., :-1]).all()


def test_untrained_model_starts_with_unit_normal_quantile_gaps():
    model = small_model()
    with torch.no_grad():
        model.head[-1].weight.zero_()  # leave only the bias: the initial spread
        out = model(torch.randn(2, 15, 10), torch.tensor([1, 2]))
    # z(0.9) - z(0.5) = z(0.5) - z(0.1) = 1.2816 for a standard normal.
    np.testing.assert_allclose((out[..., 2] - out[..., 1]).numpy(), 1.2816, atol=1e-4)
    np.testing.assert_allclose((out[..., 1] - out[..., 0]).numpy(), 1.2816, atol=1e-4)


def test_pinball_loss_hand_values():
    quantiles = torch.tensor([0.1, 0.5, 0.9])
    pred = torch.zeros(1, 1, 3)
    # y above every quantile by 1: loss q * 1 -> mean(0.1, 0.5, 0.9) = 0.5
    assert pinball_loss(pred, torch.ones(1, 1), quantiles).item() == pytest.approx(0.5)
    # y = -2 below: loss (1 - q) * 2 -> mean(1.8, 1.0, 0.2) = 1.0
    assert pinball_loss(pred, torch.full((1, 1), -2.0), quantiles).item() == pytest.approx(1.0)
    # Asymmetry: the 0.1-quantile pays 0.9 per unit it sits above y, 0.1 per unit below.
    lower_only = torch.tensor([0.1])
    assert pinball_loss(torch.ones(1, 1, 1), torch.zeros(1, 1), lower_only).item() == pytest.approx(0.9)
    assert pinball_loss(-torch.ones(1, 1, 1), torch.zeros(1, 1), lower_only).item() == pytest.approx(0.1)


def test_exported_forecaster_maps_out_of_vocabulary_ids_to_unknown_and_unscales():
    model = small_model(n_tickers=5)
    mean, std = np.linspace(-0.01, 0.01, 7), np.linspace(0.01, 0.05, 7)
    wrapper = ExportedForecaster(model, mean, std).eval()
    window = torch.randn(1, 15, 10).repeat(4, 1, 1)
    with torch.no_grad():
        out = wrapper(window, torch.tensor([0, -1, 5, 999]))
        scaled = model(window[:1], torch.tensor([0]))
    for row in range(1, 4):
        torch.testing.assert_close(out[row], out[0])
    expected = scaled[0] * torch.tensor(std, dtype=torch.float32)[:, None] + torch.tensor(
        mean, dtype=torch.float32)[:, None]
    torch.testing.assert_close(out[0], expected)
