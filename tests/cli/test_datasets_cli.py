"""``fedaas datasets export``: partitions a member can read, and never mixed with older ones.

An export into a folder that already holds files (an earlier export with more
members, or in another format) is refused before anything is written: the
leftover ``client_3.npz`` of a four-member export would otherwise be read as a
fourth member next to a new three-member split of the same examples.
"""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from fedaas.cli import app
from fedaas.data.source import read_npz

runner = CliRunner()


def export(out: Path, *args: str) -> tuple[int, str]:
    """Exit code and output as one line of words (rich's box and wrapping taken out)."""
    done = runner.invoke(app, ["datasets", "export", "digits", "--out", str(out), *args])
    return done.exit_code, re.sub(r"[\s│╭╮╰╯─]+", " ", done.output)


def test_an_export_writes_one_file_per_member_and_the_test_split(tmp_path: Path) -> None:
    code, output = export(tmp_path / "parts", "--members", "3")
    assert code == 0, output
    names = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert names == ["client_0.npz", "client_1.npz", "client_2.npz", "test.npz"]
    sizes = [read_npz(str(tmp_path / "parts" / f"client_{i}.npz"))[1].size for i in range(3)]
    assert f"({', '.join(map(str, sizes))} examples)" in output


def test_an_export_into_a_folder_that_holds_files_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    parts = tmp_path / "parts"
    assert export(parts, "--members", "4")[0] == 0
    before = {p.name: p.read_bytes() for p in parts.iterdir()}
    code, output = export(parts, "--members", "3", "--alpha", "5")
    assert code == 2
    assert "is not empty (it holds client_0.npz and 4 more)" in output
    assert {p.name: p.read_bytes() for p in parts.iterdir()} == before
    (tmp_path / "afile").write_text("mine")
    code, output = export(tmp_path / "afile")
    assert code == 2 and "afile is a file, not a folder" in output
    assert (tmp_path / "afile").read_text() == "mine"


def test_many_members_are_summed_up_not_listed(tmp_path: Path) -> None:
    code, output = export(tmp_path / "parts", "--members", "500")
    assert code == 0, output
    assert "wrote 500 partitions (" in output and "examples each, 1437 in all)" in output
    assert len(output) < 400
