"""What the dashboard shows, built from the coordinator's operator view only.

Every number on a page comes from a :class:`~fedaas.protocol.JobStatus`
(:meth:`Coordinator.describe`) or the member list, never from the database:
under differential privacy the privacy rules decide what a job's status
shows (participants, per-member values), and the dashboard shows exactly
that. :func:`job_view` is also what the live page receives over SSE.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

from fedaas.protocol import JobStatus, MemberInfo

CHART_GROUPS: list[tuple[str, list[str]]] = [
    ("accuracy", ["accuracy", "federated_accuracy"]),
    ("loss", ["loss", "federated_loss"]),
    ("privacy (epsilon)", ["epsilon", "record_epsilon", "epsilon_budget"]),
    ("round duration (s)", ["seconds"]),
    ("bytes", ["bytes_up", "bytes_down"]),
]
NOT_PLOTTED = {"round", "clients", "participants", "delta", "private", "federated_examples"}
MAX_JOBS_SCANNED = 200  # the members page reads at most this many recent jobs


def when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def epsilon_budget(job: JobStatus) -> float | None:
    budget = getattr(job.spec.privacy, "epsilon_budget", None)
    return float(budget) if isinstance(budget, int | float) else None


def refreshed(
    describe: Callable[..., JobStatus], job_id: str, known: JobStatus | None
) -> JobStatus:
    """The job with every round, ``known`` brought up to date: read whole the first time,
    then only its last known round again (a round's federated evaluation lands after it
    closes) and those after it. ``describe``: :meth:`Coordinator.describe`."""
    if known is None or not known.rounds:
        return describe(job_id)
    kept = known.rounds[:-1]
    fresh = describe(job_id, rounds_after=kept[-1].round if kept else 0)
    return fresh.model_copy(update={"rounds": [*kept, *fresh.rounds]})


def job_view(job: JobStatus) -> dict[str, Any]:
    """The job as the live page draws it: header fields, one series per numeric metric."""
    series: dict[str, list[float | None]] = {}
    rounds = []
    for record in job.rounds:
        values = record.model_dump()
        rounds.append(values)
    keys = sorted(
        {
            key
            for values in rounds
            for key, value in values.items()
            if key not in NOT_PLOTTED
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        }
    )
    for key in keys:
        series[key] = [_number(values.get(key)) for values in rounds]
    budget = epsilon_budget(job)
    if budget is not None and rounds:
        series["epsilon_budget"] = [budget] * len(rounds)
    grouped = {name for _, names in CHART_GROUPS for name in names}
    charts = [
        {"title": title, "keys": [k for k in names if k in series]} for title, names in CHART_GROUPS
    ]
    charts += [{"title": key, "keys": [key]} for key in keys if key not in grouped]
    current = job.current.model_dump() if job.current is not None else None
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "reason": job.reason,
        "round": job.round,
        "rounds_total": job.rounds_total,
        "progress": round(100 * job.round / max(job.rounds_total, 1)),
        "current": current,
        "created": when(job.created_at),
        "started": when(job.started_at),
        "finished": when(job.finished_at),
        "declined": job.declined,
        "x": [r["round"] for r in rounds],
        "series": series,
        "charts": [c for c in charts if c["keys"]],
        "table": [
            {
                "round": r["round"],
                "accuracy": _fmt(r.get("accuracy")),
                "loss": _fmt(r.get("loss")),
                "members": r.get("clients"),
                "seconds": _fmt(r.get("seconds"), 2),
                "epsilon": _fmt(r.get("epsilon", r.get("record_epsilon"))),
            }
            for r in reversed(rounds)
        ],
        "epsilon_budget": budget,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt(value: Any, digits: int = 4) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.{digits}f}"


def members_view(
    members: list[MemberInfo],
    contributed: Mapping[str, int],
    declines: Mapping[str, list[tuple[str, str]]],
    last_seen: dict[int, float | None],
) -> list[dict[str, Any]]:
    """Each member: online, last seen, rounds contributed (as published), declines
    (``(job id, reason)``), from :meth:`Store.contributions` and :meth:`Store.declines`."""
    return [
        {
            "name": m.name,
            "id": m.id,
            "revoked": m.revoked,
            "online": m.online and not m.revoked,
            "last_seen": when(last_seen.get(m.id)),
            "rounds": contributed.get(m.name, 0),
            "declines": list(declines.get(m.name, [])),
        }
        for m in members
    ]


def annotate(source: str, problems: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The TOML's lines, each with the problems that name a key on it; and the unplaced ones.

    A problem reads ``section.key: message``; it is shown next to the line
    that sets ``key`` inside ``[section]`` (or the section header, or line 1).
    """
    lines = source.splitlines() or [""]
    placed: dict[int, list[str]] = {}
    unplaced: list[str] = []
    for problem in problems:
        where, _, _ = problem.partition(":")
        line = _line_of(lines, where.strip())
        if line is None:
            unplaced.append(problem)
        else:
            placed.setdefault(line, []).append(problem)
    rows = [
        {"number": i + 1, "text": text, "problems": placed.get(i, [])}
        for i, text in enumerate(lines)
    ]
    return rows, unplaced


def _line_of(lines: list[str], where: str) -> int | None:
    match = re.match(r"^(?:line (\d+))", where)
    if match:
        return min(int(match.group(1)) - 1, len(lines) - 1)
    parts = where.split(".")
    section, key = parts[0], parts[1] if len(parts) > 1 else None
    current, header = None, None
    for i, text in enumerate(lines):
        stripped = text.strip()
        head = re.match(r"^\[([^\]]+)\]", stripped)
        if head:
            current = head.group(1).strip()
            if current == section:
                header = i
            continue
        if key and current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return i
    return header


def run_folder_zip(job: JobStatus, model: bytes | None) -> bytes:
    """The job's run folder as a zip: metrics.json, the spec, the model, the final status."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        rounds = [r.model_dump() for r in job.rounds]
        archive.writestr(f"{job.id}/metrics.json", json.dumps({"rounds": rounds}, indent=2))
        if job.source:
            archive.writestr(f"{job.id}/job.toml", job.source)
        archive.writestr(f"{job.id}/spec.json", json.dumps(job.spec.to_dict(), indent=2))
        status = job.model_dump(mode="json", exclude={"rounds", "spec", "source"})
        archive.writestr(f"{job.id}/status.json", json.dumps(status, indent=2))
        if model is not None:
            archive.writestr(f"{job.id}/model.safetensors", model)
    return buffer.getvalue()
