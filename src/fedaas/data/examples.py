"""The examples' data: scikit-learn's built-in datasets split across members (no download).

Each example of ``examples/`` (``fedaas demo --example NAME``) has a data
maker here that returns every member's training partition, a held-out test
split and how members store their data:

- ``digits``: handwritten digits (8x8, 10 classes), per-class Dirichlet skew
  over the members (:mod:`fedaas.data.digits`);
- ``digits_images``: the same digits exported as PNG files, one folder per
  class and member (the members read image folders; a CNN trains on them);
- ``breast_cancer``: the Wisconsin diagnostic breast-cancer data (569 cases,
  30 features), label 1 = malignant, split across 3 hospitals by a per-class
  Dirichlet(0.2) draw: a screening clinic with no malignant case, a general
  hospital with a handful, a cancer centre with most of them;
- ``diabetes``: disease progression one year after baseline (442 patients,
  10 features), a regression split across 4 clinics by body-mass index (each
  clinic sees one BMI band: a covariate shift).

Features are standardized with the training split's mean and deviation (in
a real federation the members agree on a scaling first); the diabetes
target is standardized too (RMSE in units of its deviation, ``y_scale``).
Test splits are 25% (breast cancer) and 20% (diabetes), fixed seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

from fedaas.data.digits import digits_federation
from fedaas.data.partition import dirichlet_per_class

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ExampleData:
    """Members' training partitions, the held-out split, and the members' storage format."""

    parts: list[Arrays]
    test: Arrays
    format: str = "npz"
    """How each member stores its partition: ``npz`` or ``images`` (a folder per class)."""
    names: tuple[str, ...] = ()
    """Member names (default ``member-<i>``)."""
    note: str = ""
    """One line on how the data is split, for the demo's header."""
    y_scale: float = 1.0
    """The regression target's deviation (a standardized RMSE times this is in its units)."""


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def digits(members: int, alpha: float, seed: int) -> ExampleData:
    parts, test = digits_federation(members, alpha, seed)
    note = f"digits split per-class Dirichlet(alpha={alpha}, seed={seed})"
    return ExampleData(parts, test, note=note)


def digits_images(members: int, alpha: float, seed: int) -> ExampleData:
    found = digits(members, alpha, seed)
    note = found.note + "; each member holds PNG images in one folder per class"
    return ExampleData(found.parts, found.test, "images", note=note)


HOSPITALS = ("clinic", "hospital", "cancer-centre")


def breast_cancer(members: int = 3, alpha: float = 0.2, seed: int = 1) -> ExampleData:
    """Breast cancer (1 = malignant) across ``members`` hospitals, label-skewed by Dirichlet(alpha)."""
    bunch = load_breast_cancer()
    y = (bunch.target == 0).astype(np.int64)  # scikit-learn's 0 is malignant: make it the positive
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, y, test_size=0.25, stratify=y, random_state=0
    )
    x_train, x_test = _standardize(x_train, x_test)
    parts = [(x_train[i], y_train[i]) for i in dirichlet_per_class(y_train, members, alpha, seed)]
    names = HOSPITALS if members == len(HOSPITALS) else ()
    if names:  # by how many malignant cases each sees, fewest first
        parts = sorted(parts, key=lambda p: int(p[1].sum()))
    note = (
        f"breast cancer split per-class Dirichlet(alpha={alpha}, seed={seed}); malignant cases "
        f"per member {[int(p[1].sum()) for p in parts]} of {[len(p[1]) for p in parts]}"
    )
    return ExampleData(parts, (x_test, y_test), names=names, note=note)


def diabetes(members: int = 4, alpha: float = 0.0, seed: int = 0) -> ExampleData:
    """Diabetes progression across ``members`` clinics, each one band of body-mass index."""
    bunch = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=0.2, random_state=0
    )
    x_train, x_test = _standardize(x_train, x_test)
    mean, scale = float(y_train.mean()), float(y_train.std())
    y_train = ((y_train - mean) / scale).astype(np.float32)
    y_test = ((y_test - mean) / scale).astype(np.float32)
    bmi = list(bunch.feature_names).index("bmi")
    bands = np.array_split(np.argsort(x_train[:, bmi], kind="stable"), members)
    parts = [(x_train[i], y_train[i]) for i in bands]
    note = f"diabetes split into {members} bands of body-mass index, one per clinic"
    return ExampleData(parts, (x_test, y_test), note=note, y_scale=scale)


MAKERS: dict[str, Callable[[int, float, int], ExampleData]] = {
    "digits": digits,
    "digits_images": digits_images,
    "breast_cancer": breast_cancer,
    "diabetes": diabetes,
}
"""Example name -> its data maker ``(members, alpha, seed)``."""
DEFAULT_MEMBERS = {"digits": 10, "digits_images": 10, "breast_cancer": 3, "diabetes": 4}
DEFAULT_ALPHA = {"digits": 0.5, "digits_images": 0.5, "breast_cancer": 0.2, "diabetes": 0.0}
DEFAULT_SEED = {"digits": 0, "digits_images": 0, "breast_cancer": 1, "diabetes": 0}


def example_data(
    name: str, members: int | None = None, alpha: float | None = None, seed: int | None = None
) -> ExampleData:
    """The data of example ``name`` (its defaults for what is not given)."""
    if name not in MAKERS:
        raise ValueError(f"unknown example {name!r}: use one of {', '.join(MAKERS)}")
    return MAKERS[name](
        DEFAULT_MEMBERS[name] if members is None else members,
        DEFAULT_ALPHA[name] if alpha is None else alpha,
        DEFAULT_SEED[name] if seed is None else seed,
    )
