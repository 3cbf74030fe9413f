"""Every format on every URL kind: write, open, batch; and every kind of bad data."""

from __future__ import annotations

import io
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fedaas import storage
from fedaas.data.dataset import ArrayDataset, DataError
from fedaas.data.source import FORMATS, detect_format, open_dataset, write_dataset, write_npz
from fedaas.data.streaming import StreamingDataset
from fedaas.data.tabular import write_table
from fedaas.sim.emulators import Emulator
from fedaas.spec import DataSection
from fixtures.storage import Target


def _all(ds: ArrayDataset | StreamingDataset, rng: np.random.Generator | None = None):
    xs, ys = zip(*ds.batches(10, rng), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _sorted(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(x.T[::-1])
    return x[order], y[order]


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip(target: Target, fmt: str, schema: DataSection, arrays) -> None:
    x, y = arrays
    url = write_dataset(target.base, "part", x, y, fmt, target.options)
    assert detect_format(url, target.options) == fmt
    tolerance = 0.5 / 255 + 1e-6 if fmt == "images" else 1e-7  # PNG holds 8-bit pixels
    for budget in (1 << 30, 4096):  # in memory, then streamed in record batches
        ds = open_dataset(url, schema, target.options, memory_budget=budget)
        if fmt != "npz":
            assert isinstance(ds, ArrayDataset if budget > 4096 else StreamingDataset)
        assert ds.num_examples == len(y)
        got_x, got_y = _all(ds, np.random.default_rng(0))
        assert got_x.dtype == np.float32 and got_y.dtype == np.int64
        want_x, want_y = _sorted(np.round(x * 255) / 255 if fmt == "images" else x, y)
        got_x, got_y = _sorted(got_x, got_y)
        np.testing.assert_allclose(got_x, want_x, atol=tolerance)
        np.testing.assert_array_equal(got_y, want_y)
        train, held = ds.split(0.25, seed=3)
        assert held is not None and train.num_examples + held.num_examples == len(y)
        assert len(_all(train)[1]) == train.num_examples


def test_parquet_folder_and_named_columns(tmp_path: Path, arrays) -> None:
    x, y = arrays
    names = [f"pixel_{i}" for i in range(16)]
    for i in range(3):
        write_table(
            str(tmp_path / "parts" / f"p{i}.parquet"),
            [(x[i::3], y[i::3])],
            "parquet",
            feature_columns=names,
            label_column="digit",
        )
    schema = DataSection(features=16, classes=4, feature_columns=names, label_column="digit")
    url = str(tmp_path / "parts")
    assert detect_format(url) == "parquet"
    for budget in (1 << 30, 2048):
        ds = open_dataset(url, schema, memory_budget=budget)
        got_x, got_y = _sorted(*_all(ds, np.random.default_rng(1)))
        want_x, want_y = _sorted(x, y)
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)


def test_csv_prefix_and_gzip(tmp_path: Path) -> None:
    text = "f0,f1,label,comment\n0.5,1,1,a\n2,3.25,0,b\n"
    import gzip

    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(text.encode()))
    schema = DataSection(features=2, classes=2, feature_columns="f", label_column="label")
    ds = open_dataset(str(tmp_path / "d.csv.gz"), schema)
    x, y = _all(ds)
    np.testing.assert_array_equal(x, [[0.5, 1], [2, 3.25]])
    np.testing.assert_array_equal(y, [1, 0])


def _problems(url: str, schema: DataSection, **kwargs) -> list[str]:
    with pytest.raises(DataError) as err:
        open_dataset(url, schema, **kwargs)
    assert all("\n" not in p for p in err.value.problems)
    return err.value.problems


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_table_reports_every_mismatch_at_once(tmp_path: Path, fmt: str) -> None:
    n = 20
    table = pa.table(
        {
            "x0": np.arange(n, dtype=np.float64),
            "x1": [f"v{i}" for i in range(n)],  # wrong dtype
            # x2 missing
            "x3": np.ones(n, dtype=np.float32),
            "y": np.where(np.arange(n) == 5, 7, 1),  # label 7 out of range
        }
    )
    url = str(tmp_path / f"bad.{fmt}")
    if fmt == "parquet":
        pq.write_table(table, url)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, url)
    problems = _problems(url, DataSection(features=4, classes=3))
    text = " | ".join(problems)
    assert "data has 3 feature columns named x<i>, the job expects 4 (missing x2)" in text
    assert "feature column 'x1' has type string" in text
    assert "label 7 is out of range: the job has classes 0..2" in text
    assert len(problems) == 3


def test_table_wrong_feature_count_missing_label_nan_and_fractional(tmp_path: Path) -> None:
    x = np.ones((6, 3), dtype=np.float32)
    x[2, 1] = np.nan
    write_table(str(tmp_path / "a.parquet"), [(x, np.zeros(6))], "parquet", label_column="target")
    problems = _problems(str(tmp_path / "a.parquet"), DataSection(features=2, classes=2))
    text = " | ".join(problems)
    assert "data has 3 feature columns named x<i>, the job expects 2" in text
    assert "missing label column 'y'" in text
    assert "NaN" in text
    pq.write_table(pa.table({"x0": [1.0, 2.0], "y": [0.5, 1.0]}), tmp_path / "b.parquet")
    problems = _problems(str(tmp_path / "b.parquet"), DataSection(features=1, classes=2))
    assert problems == [f"{tmp_path}/b.parquet: labels must be integers, got 0.5"]


def test_csv_bad_value_deep_in_the_file(tmp_path: Path) -> None:
    rows = [f"{i},{i % 2}" for i in range(50_000)] + ["oops,1"]
    (tmp_path / "d.csv").write_text("x0,y\n" + "\n".join(rows) + "\n")
    problems = _problems(str(tmp_path / "d.csv"), DataSection(features=1, classes=2))
    assert len(problems) == 1 and "cannot read the values" in problems[0] and "oops" in problems[0]


def test_unreadable_files_are_each_reported(tmp_path: Path, arrays) -> None:
    x, y = arrays
    schema = DataSection(features=16, classes=4)
    folder = tmp_path / "parts"
    write_table(str(folder / "good.parquet"), [(x, y)], "parquet")
    (folder / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (folder / "trunc.parquet").write_bytes((folder / "good.parquet").read_bytes()[:-20])
    problems = _problems(str(folder), schema)
    assert len(problems) == 2
    assert all("not a readable parquet file" in p for p in problems)
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    assert "not a readable NPZ file" in _problems(str(tmp_path / "x.npz"), schema)[0]
    (tmp_path / "x.csv").write_bytes(b"\x00\xff\x00")
    assert _problems(str(tmp_path / "x.csv"), schema)


def test_npz_with_objects_is_rejected(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    (tmp_path / "evil.npz").write_bytes(buffer.getvalue())
    problems = _problems(str(tmp_path / "evil.npz"), DataSection(features=1, classes=2))
    assert "not a readable NPZ file" in problems[0]


def test_npz_problems_name_the_url(tmp_path: Path) -> None:
    write_npz(str(tmp_path / "d.npz"), np.ones((3, 5)), np.array([0, 1, 9]))
    problems = _problems(str(tmp_path / "d.npz"), DataSection(features=4, classes=3))
    assert problems == [
        f"{tmp_path}/d.npz: data has 5 features, the job expects 4",
        f"{tmp_path}/d.npz: label 9 is out of range: the job has classes 0..2",
    ]


def test_image_folder_problems(tmp_path: Path, arrays) -> None:
    x, y = arrays
    root = tmp_path / "imgs"
    write_dataset(str(tmp_path), "imgs", x, y, "images")
    (root / "2" / "broken.png").write_bytes(b"not an image")
    (root / "9").mkdir()
    Image.new("RGB", (7, 5), "red").save(root / "9" / "big.jpg")  # any size, converted
    problems = _problems(str(root), DataSection(features=16, classes=4))
    text = " | ".join(problems)
    assert "class folder '9' is label 9: the job has classes 0..3" in text
    assert "broken.png: not a readable image" in text
    assert len(problems) == 2
    assert (
        "cannot derive a square image size from 15"
        in _problems(str(root), DataSection(features=15, classes=10))[0]
    )


def test_named_image_classes_rgb_and_explicit_size(tmp_path: Path) -> None:
    for i, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        Image.new("RGB", (6, 4), (255 * i, 0, 0)).save(tmp_path / name / "a.png")
    ds = open_dataset(str(tmp_path), DataSection(features=24, classes=2, image_size=[4, 2]))
    x, y = _all(ds)
    assert x.shape == (2, 24) and sorted(y.tolist()) == [0, 1]
    assert x[y == 1][0, 0] == 1.0 and x[y == 0][0, 0] == 0.0  # dog is red, RGB order


def test_missing_and_unknown(tmp_path: Path) -> None:
    schema = DataSection(features=2, classes=2)
    assert _problems(str(tmp_path / "nope.parquet"), schema) == [
        f"{tmp_path}/nope.parquet: no such file or key"
    ]
    (tmp_path / "data.txt").write_text("hi")
    assert "unknown data format" in _problems(str(tmp_path / "data.txt"), schema)[0]
    (tmp_path / "empty").mkdir()
    assert "empty folder" in _problems(str(tmp_path / "empty"), schema)[0]


def test_remote_missing_bucket_is_a_data_error(cloud_target: Target) -> None:
    target = cloud_target
    url = target.emulator.url("absent-bucket", "d.parquet")
    assert _problems(url, DataSection(features=2, classes=2), storage_options=target.options) == [
        f"{url}: bucket or container 'absent-bucket' does not exist"
    ]
    url = storage.join(target.base, "nothing.csv")
    assert _problems(url, DataSection(features=2, classes=2), storage_options=target.options) == [
        f"{url}: no such file or key"
    ]


def test_the_data_section_says_how_to_read(tmp_path: Path) -> None:
    (tmp_path / "table.txt").write_text("f0,f1,label\n0.5,1,1\n2,3,0\n")
    schema = DataSection(
        features=2, classes=2, format="csv", feature_columns="f", label_column="label"
    )
    x, y = _all(open_dataset(str(tmp_path / "table.txt"), schema))
    np.testing.assert_array_equal(x, [[0.5, 1], [2, 3]])
    np.testing.assert_array_equal(y, [1, 0])


@pytest.mark.emulator
def test_wrong_s3_credentials_are_one_clear_data_error(
    s3_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    storage.install_log_redaction()  # as every process's logging set-up does
    bucket = s3_emulator.make_bucket("creds")
    schema = DataSection(features=2, classes=2)
    url = write_dataset(
        bucket, "d", [[0.0, 1.0]] * 4, [0, 1, 0, 1], "parquet", s3_emulator.storage_options
    )
    for bad in ({"secret": secret}, {"key": "AKIAWRONGWRONG"}):
        opts = {**s3_emulator.storage_options, **bad}
        with caplog.at_level(logging.DEBUG), pytest.raises(DataError) as err:
            open_dataset(url, schema, opts)
        assert len(err.value.problems) == 1
        problem = err.value.problems[0]
        assert "access denied" in problem and "\n" not in problem and secret not in problem
        assert "AWS_ACCESS_KEY_ID" in problem
        assert secret not in caplog.text


class _Finalized:
    """Garbage whose finalizer runs Python code, so the collector can switch threads."""

    def __del__(self) -> None:
        sum(range(50))


def test_members_in_threads_read_npz_at_once(tmp_path: Path) -> None:
    """Members run as threads read their NPZ at the same time. On CPython 3.11 two
    NumPy header parses interleaved by a thread switch fail with ``SystemError``
    (python/cpython#106905); every read must succeed."""
    write_npz(str(tmp_path / "d.npz"), np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]))
    schema = DataSection(features=3, classes=2)
    failures: list[str] = []

    def member() -> None:
        for _ in range(200):
            junk = [_Finalized() for _ in range(20)]
            junk[0].cycle, junk[1].cycle = junk[1], junk[0]
            del junk
            try:
                assert open_dataset(str(tmp_path / "d.npz"), schema).num_examples == 4
            except Exception as exc:  # every failure is the finding
                failures.append(f"{type(exc).__name__}: {exc}")

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=member) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(previous)
    assert failures == []
