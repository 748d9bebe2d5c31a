"""The fused network: an LSTM over the feature window + a ticker embedding -> H x Q quantiles."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import nn
from torch.nn import functional as F

from service.forecasting.spec import SCALE_FEATURE
from service.forecasting.volatility import VOL_FLOOR
from training.config import ModelConfig


class QuantileLSTM(nn.Module):
    """LSTM(window) ++ Embedding(ticker) -> MLP -> monotone quantiles of the scaled targets."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.horizon = config.horizon
        self.quantiles = tuple(config.quantiles)
        self.median_index = self.quantiles.index(0.5)
        self.lstm = nn.LSTM(
            config.n_features,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        # Row 0 is the unknown ticker; rows 1.. are the training vocabulary.
        self.ticker_embedding = nn.Embedding(config.n_tickers, config.embedding_dim)
        self.head = nn.Sequential(
            nn.Linear(config.hidden_size + config.embedding_dim, config.head_hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, config.horizon * len(self.quantiles)),
        )
        self._init_quantile_spread()

    def _init_quantile_spread(self) -> None:
        """Start the offsets at a unit normal's quantile gaps: targets are standardised."""
        z = [NormalDist().inv_cdf(q) for q in self.quantiles]
        bias = torch.zeros(self.horizon, len(self.quantiles))
        for k in range(len(z)):
            if k != self.median_index:
                gap = abs(z[k] - z[k + 1 if k < self.median_index else k - 1])
                bias[:, k] = math.log(math.expm1(gap))  # softplus^-1(gap)
        last = self.head[-1]
        with torch.no_grad():
            last.bias.copy_(bias.reshape(-1))

    def forward(self, window: torch.Tensor, ticker_id: torch.Tensor) -> torch.Tensor:
        """(B, W, F) float, (B,) int64 -> (B, H, Q) quantiles, non-decreasing along Q."""
        sequence, _ = self.lstm(window)  # (B, W, hidden)
        last = sequence[:, -1, :]  # (B, hidden)
        ticker = self.ticker_embedding(ticker_id)  # (B, E)
        raw = self.head(torch.cat([last, ticker], dim=-1))  # (B, H * Q)
        raw = raw.view(-1, self.horizon, len(self.quantiles))  # (B, H, Q)
        return monotone_quantiles(raw, self.median_index)


class QuantileEnsemble(nn.Module):
    """Seed-ensemble members of one config (same data, same scalers): their quantiles averaged.

    Quacks as a QuantileLSTM (config, horizon, quantiles) so ExportedForecaster wraps it and the
    export path, the artifact's inputs and outputs are unchanged. Each member's output is sorted
    along Q (monotone_quantiles), and so is a mean of sorted vectors.
    """

    def __init__(self, members: list[QuantileLSTM]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        configs = {m.config for m in members}
        if len(configs) != 1:
            raise ValueError(f"ensemble members differ in their network config: {configs}")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.config = first.config
        self.horizon, self.quantiles, self.median_index = (
            first.horizon, first.quantiles, first.median_index)

    def forward(self, window: torch.Tensor, ticker_id: torch.Tensor) -> torch.Tensor:
        """(B, W, F) float, (B,) int64 -> (B, H, Q): the members' mean, non-decreasing along Q."""
        return torch.stack([member(window, ticker_id) for member in self.members]).mean(dim=0)


def monotone_quantiles(raw: torch.Tensor, median_index: int) -> torch.Tensor:
    """(..., Q) raw outputs -> quantiles: the median, then cumulative softplus offsets both ways."""
    median = raw[..., median_index : median_index + 1]
    parts = []
    if median_index > 0:
        below = F.softplus(raw[..., :median_index])  # gaps, innermost last
        # Cumulative sum from the median outwards: reverse, cumsum, reverse.
        below = torch.flip(torch.cumsum(torch.flip(below, dims=[-1]), dim=-1), dims=[-1])
        parts.append(median - below)
    parts.append(median)
    if median_index < raw.shape[-1] - 1:
        above = torch.cumsum(F.softplus(raw[..., median_index + 1 :]), dim=-1)
        parts.append(median + above)
    return torch.cat(parts, dim=-1)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean over B, H, Q of max(q (y - y_q), (q - 1)(y - y_q)); pred (B, H, Q), target (B, H)."""
    error = target.unsqueeze(-1) - pred  # (B, H, Q)
    return torch.maximum(quantiles * error, (quantiles - 1.0) * error).mean()


class ExportedForecaster(nn.Module):
    """What goes into ONNX: id clamping, the network, and every step back to log returns.

    Out-of-vocabulary ids become 0 inside the graph (ONNX providers differ on out-of-range
    Gather). The network predicts scale-free returns; the graph undoes the target scaler and
    then multiplies by the origin's volatility scale max(σ_t, VOL_FLOOR) · √h, where σ_t is the
    scale feature in the window's last row (unscaled with the feature scaler). This is the one
    place that multiplication happens: serving, the backtest and the validation metrics all get
    log returns from here, never touching either scaling.
    """

    def __init__(self, model: QuantileLSTM | QuantileEnsemble, target_mean, target_std,
                 scale_index: int, scale_mean: float, scale_std: float):
        super().__init__()
        self.model = model
        self.n_tickers = model.config.n_tickers
        self.scale_index = int(scale_index)
        self.register_buffer("target_mean", torch.as_tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.as_tensor(target_std, dtype=torch.float32))
        self.register_buffer("scale_mean", torch.tensor(float(scale_mean), dtype=torch.float32))
        self.register_buffer("scale_std", torch.tensor(float(scale_std), dtype=torch.float32))
        sqrt_h = torch.sqrt(torch.arange(1, model.horizon + 1, dtype=torch.float32))
        self.register_buffer("sqrt_horizon", sqrt_h)

    @classmethod
    def of(cls, model: QuantileLSTM | QuantileEnsemble, prepared) -> ExportedForecaster:
        """The wrapper for a model trained on `prepared` (training.dataset.PreparedData)."""
        k = list(prepared.spec.features).index(SCALE_FEATURE)
        features, target = prepared.feature_scaler, prepared.target_scaler
        return cls(model, target.mean, target.std, k, features.mean[k], features.std[k])

    def forward(self, window: torch.Tensor, ticker_id: torch.Tensor) -> torch.Tensor:
        """(B, W, F) scaled features, (B,) int64 -> (B, H, Q) log returns."""
        known = (ticker_id >= 0) & (ticker_id < self.n_tickers)
        ticker_id = torch.where(known, ticker_id, torch.zeros_like(ticker_id))
        scaled = self.model(window, ticker_id)  # (B, H, Q)
        # A positive per-horizon std keeps the quantiles sorted.
        free = scaled * self.target_std[None, :, None] + self.target_mean[None, :, None]
        sigma = window[:, -1, self.scale_index] * self.scale_std + self.scale_mean  # (B,)
        scale = torch.clamp(sigma, min=VOL_FLOOR)[:, None] * self.sqrt_horizon[None, :]  # (B, H)
        return free * scale[:, :, None]  # (B, H, Q), still sorted: scale > 0
