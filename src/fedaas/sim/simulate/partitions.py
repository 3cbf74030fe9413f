"""Which virtual members a simulation has and where each one's data lies.

``partitions`` is one of:

- ``dirichlet:digits:N[:ALPHA]``: scikit-learn's digits split over ``N``
  members per class by Dirichlet(``ALPHA``, default 0.5)
  (:func:`fedaas.data.digits.digits_federation`), seeded by the job seed;
- ``synthetic:A,B:N``: the FedProx paper's Synthetic(A, B) over ``N``
  devices (:func:`fedaas.data.synthetic.synthetic_federation`);
- a folder (path or ``file://``) or an object-store URL prefix (``s3://``,
  ``gs://``, ``az://``): one member per entry (a file, or a folder of
  images), in name order (``client_2`` before ``client_10``), named after
  the entry without its suffix; an entry named ``test`` is the held-out set
  (as ``fedaas datasets export`` writes it), never a member;
- from Python also a list of data URLs (``member-0``, ...), a dict name ->
  URL, or a list of ``(x, y)`` arrays.

``N`` can be left out of a generator and given as ``members``; with a
folder, ``members`` takes the first ``N`` entries. Generated and in-memory
partitions are written once to ``data_dir/member-<i>.npz`` (and the
generator's held-out split to ``data_dir/test.npz``), so that every worker
reads a member's data with the service's own reader, when it trains it.

:func:`plan_partitions` does everything that can fail (parsing, generating,
listing) and writes nothing; :func:`write_partitions` then writes into the
run folder. A mistyped ``--partitions`` therefore never replaces an earlier
run's folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedaas import storage
from fedaas.data.source import write_npz

DIRICHLET_ALPHA = 0.5


class PartitionError(ValueError):
    """The partitions cannot be resolved (one line for the command line)."""


@dataclass(frozen=True)
class Generated:
    """Partitions made in memory, not yet written (:func:`write_partitions`)."""

    parts: Sequence[tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray] | None
    description: str


@dataclass(frozen=True)
class Partitions:
    members: list[tuple[str, str]]
    """``(name, data URL)`` per member, in member order (member ``i`` has id ``i + 1``)."""
    holdout: str | None = None
    """A held-out set that came with a generator (used unless the spec names one)."""
    description: str = ""


def _count(text: str | None, members: int | None, what: str) -> int:
    if text:
        try:
            n = int(text)
        except ValueError:
            raise PartitionError(f"{what}: the member count {text!r} is not a number") from None
        if members is not None and members != n:
            raise PartitionError(f"{what} names {n} members but members is {members}")
    elif members is None:
        raise PartitionError(f"{what}: say how many members (e.g. {what}:100, or --members)")
    else:
        n = members
    if n < 1:
        raise PartitionError(f"{what}: at least one member is needed")
    return n


def _write(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray] | None,
    data_dir: Path,
    description: str,
) -> Partitions:
    data_dir.mkdir(parents=True, exist_ok=True)
    members = []
    for i, (x, y) in enumerate(parts):
        path = data_dir / f"member-{i}.npz"
        write_npz(str(path), np.asarray(x, np.float32), np.asarray(y, np.int64), compressed=False)
        members.append((f"member-{i}", str(path.resolve())))
    holdout = None
    if test is not None:
        write_npz(str(data_dir / "test.npz"), test[0], test[1])
        holdout = str((data_dir / "test.npz").resolve())
    return Partitions(members, holdout, description)


def _generated(text: str, members: int | None, seed: int) -> Generated:
    kind, _, rest = text.partition(":")
    fields = rest.split(":")
    if kind == "dirichlet":
        if fields[0] != "digits":
            raise PartitionError(f"dirichlet:{fields[0]}: the built-in dataset is 'digits'")
        if len(fields) > 3:
            raise PartitionError("use dirichlet:digits:N[:ALPHA]")
        n = _count(fields[1] if len(fields) > 1 else None, members, "dirichlet:digits")
        try:
            alpha = float(fields[2]) if len(fields) > 2 else DIRICHLET_ALPHA
        except ValueError:
            raise PartitionError(f"dirichlet:digits: alpha {fields[2]!r} is not a number") from None
        from fedaas.data.digits import digits_federation

        try:
            parts, test = digits_federation(n, alpha, seed)
        except ValueError as exc:  # alpha not positive, more members than examples
            raise PartitionError(f"dirichlet:digits:{n}:{alpha:g}: {exc}") from None
        return Generated(parts, test, f"digits, Dirichlet(alpha={alpha:g}) over {n}")
    # synthetic:A,B:N
    if len(fields) > 2 or fields[0].count(",") != 1:
        raise PartitionError("use synthetic:ALPHA,BETA:N (the FedProx paper's Synthetic(a, b))")
    try:
        alpha, beta = (float(v) for v in fields[0].split(","))
    except ValueError:
        raise PartitionError(f"synthetic: {fields[0]!r} is not ALPHA,BETA") from None
    n = _count(fields[1] if len(fields) > 1 else None, members, "synthetic")
    from fedaas.data.synthetic import synthetic_federation

    try:
        parts, test = synthetic_federation(alpha, beta, n, seed)
    except ValueError as exc:  # alpha or beta negative or not finite
        raise PartitionError(f"synthetic:{alpha:g},{beta:g}:{n}: {exc}") from None
    return Generated(parts, test, f"Synthetic({alpha:g},{beta:g}) over {n}")


HOLDOUT_NAME = "test"
"""The entry of a listed folder that is the held-out set, not a member (``fedaas datasets
export`` writes ``client_<i>`` and ``test``)."""


def _natural(name: str) -> tuple[str, int, str]:
    """``client_2`` before ``client_10``: a trailing number sorts as a number."""
    stem = name.rstrip("0123456789")
    digits = name[len(stem) :]
    return (stem, int(digits) if digits else -1, name)


def _listed(url: str, members: int | None) -> Partitions:
    """One member per entry of a folder or object-store prefix, in name order (a trailing
    number as a number); an entry named ``test`` is the held-out set."""
    fs, path = None, ""
    try:
        fs, path = storage.resolve(url)
        entries = sorted(fs.ls(path, detail=False))
    except FileNotFoundError:
        raise PartitionError(f"no folder {storage.redact(url)}") from None
    except Exception as exc:  # credentials, options, an unreachable store: one line
        raise PartitionError(f"cannot list {storage.explain(exc, url, fs, path)}") from None
    base = url.rstrip("/")
    found: list[tuple[str, str]] = []
    holdout: str | None = None
    for entry in entries:
        leaf = entry.rstrip("/").rsplit("/", 1)[-1]
        if not leaf or leaf.startswith("."):
            continue
        name = leaf.split(".", 1)[0] or leaf
        where = f"{base}/{leaf}" if storage.protocol_of(url) != "file" else entry
        if name == HOLDOUT_NAME:
            holdout = where
        else:
            found.append((name, where))
    found.sort(key=lambda item: _natural(item[0]))
    if members is not None:
        if len(found) < members:
            raise PartitionError(f"{storage.redact(url)} has {len(found)} entries, not {members}")
        found = found[:members]
    _unique([n for n, _ in found], storage.redact(url))
    if not found:
        raise PartitionError(f"{storage.redact(url)} holds no partitions")
    held = f" and the held-out {HOLDOUT_NAME}" if holdout else ""
    return Partitions(found, holdout, f"{len(found)} partitions{held} in {storage.redact(url)}")


def _unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PartitionError(f"two partitions in {where} are both named {name!r}")
        seen.add(name)


def plan_partitions(partitions: Any, *, members: int | None, seed: int) -> Partitions | Generated:
    """The members and their data (see the module docstring), written nowhere yet;
    :class:`PartitionError` if they cannot be had."""
    if isinstance(partitions, Path):
        partitions = str(partitions)
    if isinstance(partitions, str):
        if partitions.startswith(("dirichlet:", "synthetic:")):
            return _generated(partitions, members, seed)
        return _listed(partitions, members)
    if isinstance(partitions, Mapping):
        pairs = [(str(k), str(v)) for k, v in partitions.items()]
        _unique([n for n, _ in pairs], "the partitions")
        return Partitions(pairs[:members] if members else pairs, None, f"{len(pairs)} partitions")
    items = list(partitions)
    if members is not None:
        items = items[:members]
    if not items:
        raise PartitionError("no partitions given")
    if all(isinstance(p, str | Path) for p in items):
        return Partitions([(f"member-{i}", str(p)) for i, p in enumerate(items)], None, "")
    arrays = [(np.asarray(x), np.asarray(y)) for x, y in items]
    return Generated(arrays, None, f"{len(arrays)} in-memory partitions")


def write_partitions(plan: Partitions | Generated, data_dir: Path) -> Partitions:
    """Generated partitions written to ``data_dir`` (listed ones are used where they lie)."""
    if isinstance(plan, Partitions):
        return plan
    return _write(plan.parts, plan.test, data_dir, plan.description)
