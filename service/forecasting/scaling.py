"""Per-feature standardisation, fit on training dates only, carried inside the artifact as JSON."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Below this a feature is treated as constant and left unscaled (std 1) rather than blown up.
STD_FLOOR = 1e-8


@dataclass
class StandardScaler:
    """z = (x - mean) / std over the last axis; mean and std have shape (F,)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, axis: int | tuple[int, ...] = 0) -> StandardScaler:
        """Mean and std of x over `axis` (pass (0, 1) for (N, W, F) windows); sees only x."""
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            raise ValueError("cannot fit a scaler on an empty array")
        if not np.isfinite(x).all():
            raise ValueError("cannot fit a scaler on non-finite values")
        mean = x.mean(axis=axis)
        std = x.std(axis=axis)
        std = np.where(std < STD_FLOOR, 1.0, std)
        return cls(mean=np.asarray(mean, dtype=np.float64), std=np.asarray(std, dtype=np.float64))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std; float32 in gives float32 out."""
        x = np.asarray(x)
        dtype = _out_dtype(x)
        return ((x - self.mean.astype(dtype)) / self.std.astype(dtype)).astype(dtype, copy=False)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """z * std + mean; float32 in gives float32 out."""
        z = np.asarray(z)
        dtype = _out_dtype(z)
        return (z * self.std.astype(dtype) + self.mean.astype(dtype)).astype(dtype, copy=False)

    def to_dict(self) -> dict:
        """JSON-able {"mean": [...], "std": [...]}."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> StandardScaler:
        """Inverse of to_dict."""
        mean = np.asarray(d["mean"], dtype=np.float64)
        std = np.asarray(d["std"], dtype=np.float64)
        if mean.shape != std.shape:
            raise ValueError(f"scaler mean {mean.shape} and std {std.shape} differ in shape")
        if not (std > 0).all():
            raise ValueError("scaler std must be positive")
        return cls(mean=mean, std=std)


def _out_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float32) if x.dtype == np.float32 else np.dtype(np.float64)
