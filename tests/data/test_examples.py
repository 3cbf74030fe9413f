"""The examples' data (``fedaas demo --example NAME``) and the ``cnn`` built-in that reads images.

Each example's split is what its description says (who holds what), nothing of the test split
leaks into training, every spec in ``examples/`` is valid and evaluates something, and an image
row reaches the CNN as the picture it was (channels and orientation kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedaas.data.examples import MAKERS, example_data
from fedaas.data.source import open_dataset, write_dataset
from fedaas.models import build_model
from fedaas.models.cnn import FlatImageCNN
from fedaas.models.registry import ModelError, parameter_count
from fedaas.spec import load_spec, parse_spec
from fedaas.spec_train import job_metrics

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_every_example_has_a_spec_that_evaluates(name: str) -> None:
    spec = load_spec(EXAMPLES / f"{name}.toml")
    assert spec.evaluation.validation_split > 0 or spec.evaluation.holdout
    assert job_metrics(spec)
    found = example_data(name)
    assert len(found.parts) == spec.federation.min_clients
    x, y = found.test
    assert x.shape[1] == spec.data.features and len(x) == len(y)
    train_rows = {row.tobytes() for part, _ in found.parts for row in part}
    assert not any(row.tobytes() in train_rows for row in x)  # the test split is held out


def test_breast_cancer_is_three_hospitals_with_different_case_mixes() -> None:
    found = example_data("breast_cancer")
    assert found.names == ("clinic", "hospital", "cancer-centre")
    malignant = [int(y.sum()) for _, y in found.parts]
    assert malignant == sorted(malignant) and malignant[0] <= 5 and malignant[-1] > 100
    assert sum(len(y) for _, y in found.parts) + len(found.test[1]) == 569
    assert found.test[1].mean() == pytest.approx(212 / 569, abs=0.01)  # 1 = malignant


def test_diabetes_clinics_each_see_one_band_of_bmi() -> None:
    found = example_data("diabetes")
    bands = [(x[:, 2].min(), x[:, 2].max()) for x, _ in found.parts]  # column 2: bmi
    assert all(hi <= lo for (_, hi), (lo, _) in zip(bands, bands[1:], strict=False))
    y = np.concatenate([y for _, y in found.parts])
    assert y.dtype == np.float32 and abs(y.mean()) < 1e-5 and y.std() == pytest.approx(1, abs=1e-4)
    assert found.y_scale == pytest.approx(78.3, abs=0.1)


def test_the_cnn_sees_image_rows_as_the_pictures_they_were(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "job": {"name": "cnn", "rounds": 1},
            "model": {"name": "cnn", "hidden": [4, 8]},
            "data": {"features": 3 * 6 * 4, "classes": 3, "image_size": [4, 6]},
        }
    )
    model = build_model(spec.model, spec.data, seed=0)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(spec.model, spec.data)
    assert isinstance(model, FlatImageCNN) and (model.channels, model.height, model.width) == (
        3,
        6,
        4,
    )
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 6, 4, 3)).astype(np.float32) / 255  # (N, H, W, C)
    labels = np.array([0, 2])
    write_dataset(str(tmp_path), "img", pixels.reshape(2, -1), labels, "images", image_size=(4, 6))
    rows = open_dataset(str(tmp_path / "img"), spec.data.model_copy(update={"format": "images"}))
    x, y = next(rows.batches(2))
    model.features, model.head = nn.Identity(), nn.Identity()  # what the convolutions get
    seen = model(torch.from_numpy(x)).reshape(2, 3, 6, 4).numpy()  # (N, C, H, W)
    for row, label in zip(seen, y, strict=True):
        picture = pixels[list(labels).index(int(label))].transpose(2, 0, 1)
        assert np.abs(row - picture).max() < 1 / 255
    wrong = spec.data.model_copy(update={"features": 63, "image_size": None})
    with pytest.raises(ModelError, match="cnn"):
        build_model(spec.model, wrong)
