"""The demo's data and initial parameters, as NumPy arrays shared by every backend.

scikit-learn's handwritten digits (``load_digits``: 1797 images of 8x8 pixels, ten
classes) ship inside scikit-learn, so the demo needs no network. Everything here is
float64 NumPy; each backend converts the same arrays with ``xp.asarray``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

__all__ = ["Digits", "init_mlp", "load_digits_split"]


@dataclass(frozen=True)
class Digits:
    """A fixed train/test split: pixel values in ``[0, 1]``, one-hot training targets."""

    x_train: Any
    onehot_train: Any
    x_test: Any
    labels_test: Any

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.onehot_train.shape[1])


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """scikit-learn's digits, shuffled with ``seed`` and split into train and test sets."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float64) / 16.0
    labels = np.asarray(data.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    x, labels = x[order], labels[order]
    n_test = round(test_fraction * x.shape[0])
    n_classes = int(labels.max()) + 1
    onehot = np.eye(n_classes, dtype=np.float64)[labels[n_test:]]
    return Digits(x[n_test:], onehot, x[:n_test], labels[:n_test])


def init_mlp(sizes: tuple[int, ...], seed: int = 0) -> dict[str, Any]:
    """Parameters ``w1, b1, w2, b2, ...`` of an MLP with layer ``sizes`` (Glorot-uniform weights)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {}
    for i, (n_in, n_out) in enumerate(pairwise(sizes), start=1):
        limit = np.sqrt(6.0 / (n_in + n_out))
        params[f"w{i}"] = rng.uniform(-limit, limit, size=(n_in, n_out))
        params[f"b{i}"] = np.zeros(n_out)
    return params
