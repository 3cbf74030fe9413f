"""Run folders: a new run replaces an earlier run's folder, and never anything else.

``fedaas demo`` and ``fedaas simulate`` write to ``--out``; a mistyped
``--out`` that names someone's folder must be refused with nothing deleted.
One rule (:func:`fedaas.report.fresh_run_folder`), tried directly and through
both entry points.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedaas.report import fresh_run_folder
from fedaas.sim.demo import run_demo
from fedaas.sim.simulate import simulate
from fedaas.spec import parse_spec
from fixtures.specs import make_spec


@pytest.fixture
def someones_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "chapters" / "one.tex").write_text("years of work")
    return folder


def test_an_earlier_run_or_an_interrupted_one_is_replaced(tmp_path: Path) -> None:
    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"old")
    fresh_run_folder(done, ".run")
    assert [p.name for p in done.iterdir()] == [".run"]
    interrupted = tmp_path / "interrupted"
    (interrupted / ".run").mkdir(parents=True)
    (interrupted / "data").mkdir()
    fresh_run_folder(interrupted, ".run")
    assert [p.name for p in interrupted.iterdir()] == [".run"]
    fresh_run_folder(tmp_path / "new" / "deeper", ".run")
    assert (tmp_path / "new" / "deeper" / ".run").is_dir()


def test_anything_else_is_refused_and_left_as_it_was(tmp_path: Path, someones_folder: Path) -> None:
    with pytest.raises(FileExistsError, match="not an earlier run's folder"):
        fresh_run_folder(someones_folder, ".run")
    with pytest.raises(FileExistsError, match="not an earlier run's folder"):
        fresh_run_folder(someones_folder, "chapters-not-a-marker")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file"):
        fresh_run_folder(a_file, ".run")
    assert (someones_folder / "chapters" / "one.tex").read_text() == "years of work"
    assert [p.name for p in someones_folder.iterdir()] == ["chapters"]
    assert a_file.read_text() == "keep me"


def test_demo_and_simulate_refuse_someones_folder_before_they_start(someones_folder: Path) -> None:
    with pytest.raises(FileExistsError):
        run_demo(out=someones_folder)
    spec = parse_spec(make_spec("sim", 1, clients=2))
    with pytest.raises(FileExistsError):
        simulate(spec, "dirichlet:digits:2:0.5", out_dir=someones_folder)
    assert (someones_folder / "chapters" / "one.tex").read_text() == "years of work"
    assert [p.name for p in someones_folder.iterdir()] == ["chapters"]
