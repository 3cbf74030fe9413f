"""scikit-learn's built-in handwritten digits (8x8 images, 10 classes, no download)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedaas.data.partition import dirichlet_per_class

FEATURES = 64
CLASSES = 10


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: pixels / 16, a stratified 20% test split."""
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )
    return x_train, y_train, x_test, y_test


def digits_federation(
    clients: int, alpha: float, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """The training split divided by per-class Dirichlet(alpha); plus the test split."""
    x_train, y_train, x_test, y_test = digits_split()
    parts = dirichlet_per_class(y_train, clients, alpha, seed)
    return [(x_train[p], y_train[p]) for p in parts], (x_test, y_test)
