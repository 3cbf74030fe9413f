"""Image-folder datasets: one subfolder per class, any format Pillow reads.

Folder names that are all integers are the class labels themselves
(``0/``, ``1/``, ... ``10/``); otherwise the sorted names are numbered from 0.
Every image becomes float32 pixels in [0, 1], flattened row-major, converted
to grayscale (``L``) or ``RGB`` and resized to the image size. Without an
explicit size the job's feature count decides: ``s*s`` features means an
``s x s`` grayscale image, ``3*s*s`` an ``s x s`` RGB one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from fsspec.spec import AbstractFileSystem
from PIL import Image

from fedaas import storage
from fedaas.data.dataset import ArrayDataset, DataError
from fedaas.data.streaming import Chunk, MemoryPlan, StreamingDataset
from fedaas.spec import DataSection

ImageMode = Literal["L", "RGB"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_CHANNELS = {"L": 1, "RGB": 3}


def image_shape(
    features: int, image_size: tuple[int, int] | None = None, mode: ImageMode | None = None
) -> tuple[int, int, ImageMode]:
    """``(width, height, mode)`` for images of ``features`` values (ValueError if none fits)."""
    if image_size is not None:
        width, height = (int(v) for v in image_size)
        modes = (
            [mode] if mode else [m for m, c in _CHANNELS.items() if width * height * c == features]
        )
        if not modes or width * height * _CHANNELS[modes[0]] != features:
            raise ValueError(
                f"image size {width}x{height} ({mode or 'L or RGB'}) does not give the job's "
                f"{features} features"
            )
        return width, height, modes[0]
    for m in [mode] if mode else ["L", "RGB"]:
        side = math.isqrt(features // _CHANNELS[m])
        if side * side * _CHANNELS[m] == features:
            return side, side, m
    raise ValueError(f"cannot derive a square image size from {features} features; give image_size")


def decode_image(data: bytes, width: int, height: int, mode: ImageMode) -> np.ndarray:
    """Pixels of an encoded image as flat float32 in [0, 1]."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert(mode)
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        return (np.asarray(img, dtype=np.float32) / 255.0).reshape(-1)


class ImageFolderSource:
    """The :class:`~fedaas.data.streaming.ChunkSource` of a checked image folder."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        paths: list[str],
        labels: np.ndarray,
        shape: tuple[int, int, ImageMode],
        read_rows: int,
    ) -> None:
        self.fs, self.paths, self.labels, self.shape = fs, paths, labels, shape
        self.read_rows = max(1, read_rows)
        self.features = shape[0] * shape[1] * _CHANNELS[shape[2]]
        self.num_rows = len(paths)

    def read(self, index: np.ndarray) -> tuple[np.ndarray, list[tuple[int, BaseException]]]:
        """Decoded images at ``index`` (rows of failures are zero) and the failures."""
        paths = [self.paths[i] for i in index]
        blobs = self.fs.cat(paths, on_error="return") if paths else {}
        x = np.zeros((len(paths), self.features), dtype=np.float32)
        failures: list[tuple[int, BaseException]] = []
        for row, path in enumerate(paths):
            blob = blobs.get(path, blobs.get(self.fs._strip_protocol(path)))
            try:
                if isinstance(blob, BaseException):
                    raise blob
                if not isinstance(blob, bytes):
                    raise FileNotFoundError(path)
                x[row] = decode_image(blob, *self.shape)
            except Exception as exc:
                failures.append((int(index[row]), exc))
        return x, failures

    def chunks(self, rng: np.random.Generator | None) -> Iterator[Chunk]:
        order = rng.permutation(self.num_rows) if rng is not None else np.arange(self.num_rows)
        for start in range(0, self.num_rows, self.read_rows):
            index = order[start : start + self.read_rows]
            x, failures = self.read(index)
            if failures:
                i, exc = failures[0]
                url = self.fs.unstrip_protocol(self.paths[i])
                raise storage.explain(exc, url, self.fs, self.paths[i])
            yield x, self.labels[index], index.astype(np.int64)


def _class_labels(names: list[str]) -> dict[str, int]:
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(sorted(names))}


def open_images(
    url: str,
    fs: AbstractFileSystem,
    path: str,
    schema: DataSection,
    image_size: tuple[int, int] | None = None,
    image_mode: ImageMode | None = None,
    memory_budget: int = 256 << 20,
) -> ArrayDataset | StreamingDataset:
    """Check the image folder at ``url`` against ``schema`` (decoding every image) and open it."""
    shown = storage.redact(url)
    problems: list[str] = []
    try:
        shape: tuple[int, int, ImageMode] | None = image_shape(
            schema.features, image_size, image_mode
        )
    except ValueError as exc:
        problems.append(f"{shown}: {exc}")
        shape = None
    with storage.errors_as_storage_error(url, fs, path):
        folders = {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: e["name"]
            for e in fs.ls(path, detail=True)
            if e["type"] == "directory"
        }
    labels_of = _class_labels([n for n in folders if not n.startswith(".")])
    if schema.classes is None:
        raise DataError([f"{shown}: image folders hold classes; a regression reads a table or npz"])
    for name, label in sorted(labels_of.items(), key=lambda kv: kv[1]):
        if label >= schema.classes:
            problems.append(
                f"{shown}: class folder {name!r} is label {label}: the job has classes "
                f"0..{schema.classes - 1}"
            )
    paths: list[str] = []
    labels: list[int] = []
    for name, label in labels_of.items():
        with storage.errors_as_storage_error(url, fs, folders[name]):
            found = sorted(p for p in fs.find(folders[name]) if p.lower().endswith(IMAGE_SUFFIXES))
        paths += found
        labels += [label] * len(found)
    if not paths:
        problems.append(f"{shown}: no images ({', '.join(IMAGE_SUFFIXES)}) in class subfolders")
    if shape is None or not paths:
        raise DataError(problems)
    plan = MemoryPlan.of(memory_budget, schema.features)
    labels_array = np.asarray(labels, dtype=np.int64)
    source = ImageFolderSource(fs, paths, labels_array, shape, min(plan.read_rows, 1024))
    keep = not problems and len(paths) * plan.row_bytes <= plan.in_memory_bytes
    kept: list[np.ndarray] = []
    bad: list[str] = []
    for start in range(0, len(paths), source.read_rows):
        x, failures = source.read(np.arange(start, min(start + source.read_rows, len(paths))))
        bad += [
            f"{storage.redact(fs.unstrip_protocol(paths[i]))}: not a readable image "
            f"({storage.one_line(exc)})"
            for i, exc in failures
        ]
        if keep:
            kept.append(x)
    if len(bad) > 10:
        bad = [*bad[:10], f"{shown}: and {len(bad) - 10} more unreadable images"]
    problems += bad
    if problems:
        raise DataError(problems)
    if keep:
        return ArrayDataset(np.concatenate(kept), source.labels.copy())
    return StreamingDataset(source, plan.buffer_rows)


def write_images(
    url: str,
    x: np.ndarray,
    y: np.ndarray,
    storage_options: dict[str, Any] | None = None,
    image_size: tuple[int, int] | None = None,
    image_mode: ImageMode | None = None,
) -> None:
    """Write rows of ``x`` (pixels in [0, 1]) as PNG files ``url/<label>/<row>.png``."""
    x = np.asarray(x, dtype=np.float32)
    width, height, mode = image_shape(x.shape[1], image_size, image_mode)
    fs, path = storage.resolve(url, storage_options)
    shape = (height, width) if mode == "L" else (height, width, 3)
    with storage.errors_as_storage_error(url, fs, path):
        for start in range(0, len(x), 256):
            files = {}
            for i in range(start, min(start + 256, len(x))):
                pixels = np.clip(np.rint(x[i] * 255.0), 0, 255).astype(np.uint8).reshape(shape)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                files[f"{path}/{int(y[i])}/{i:07d}.png"] = buffer.getvalue()
            if storage.protocol_of(url) in storage.LOCAL:
                for name in {fs._parent(f) for f in files}:
                    fs.makedirs(name, exist_ok=True)
            fs.pipe(files)
