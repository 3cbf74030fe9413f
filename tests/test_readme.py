"""The README stays true: its links resolve in the repository and it documents every spec key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedaas.spec import DataSection, JobSpec, TrackingSection

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_link_resolves_inside_the_repository() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert links, "the README links the docs it mentions"
    for link in links:
        assert not link.startswith(("http://", "https://")), link
        target = link.split("#", 1)[0]
        assert (ROOT / target).exists(), link


@pytest.mark.parametrize("section", sorted(JobSpec.model_fields))
def test_every_spec_section_is_documented(section: str) -> None:
    assert f"`[{section}]`" in README


@pytest.mark.parametrize(
    "key", sorted(DataSection.model_fields) + sorted(TrackingSection.model_fields)
)
def test_every_data_and_tracking_key_is_documented(key: str) -> None:
    rows = [
        line for line in README.splitlines() if line.startswith(("| `[data]`", "| `[tracking]`"))
    ]
    assert any(f"`{key}`" in row for row in rows), key
