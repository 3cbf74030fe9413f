"""The dashboard's pure parts: errors placed next to their key; nothing fetched from outside."""

from __future__ import annotations

from pathlib import Path

from fedaas.protocol import JobStatus, MemberInfo, RoundRecord
from fedaas.server.dashboard import views
from fedaas.spec import parse_spec
from fixtures.specs import make_spec

PACKAGE = Path(views.__file__).parent

SOURCE = """[job]
name = "x"
rounds = 0

[train]
lr = -1
[federation]
min_clients = 0
"""


def test_each_problem_sits_on_the_line_of_its_key() -> None:
    rows, unplaced = views.annotate(
        SOURCE,
        [
            "job.rounds: Input should be greater than or equal to 1 (got 0)",
            "train.lr: Input should be greater than 0 (got -1)",
            "federation: min_clients must be positive",
            "line 7: not valid TOML: oops",
            "model: required key is missing",
        ],
    )
    marked = {row["number"]: row["problems"] for row in rows if row["problems"]}
    assert marked[3] == ["job.rounds: Input should be greater than or equal to 1 (got 0)"]
    assert marked[6] == ["train.lr: Input should be greater than 0 (got -1)"]
    assert marked[7] == ["federation: min_clients must be positive", "line 7: not valid TOML: oops"]
    assert unplaced == ["model: required key is missing"]


def test_every_asset_ships_in_the_package() -> None:
    """No CDN: templates and scripts load only from /ui/static (uPlot vendored, pinned)."""
    assert (PACKAGE / "static" / "uPlot-1.6.32.iife.min.js").stat().st_size > 40_000
    for path in [*PACKAGE.glob("templates/*.html"), *PACKAGE.glob("static/*.js")]:
        text = path.read_text()
        for marker in ('src="http', 'href="http', "src='//", 'src="//', "@import"):
            assert marker not in text, (path.name, marker)


def _private_job() -> JobStatus:
    spec = make_spec(
        "private",
        rounds=3,
        privacy={"mechanism": "gaussian", "noise_multiplier": 1.0, "epsilon_budget": 5.0},
    )
    # what the job status publishes under client-level DP: no participants, no byte counts
    rounds = [
        RoundRecord(round=r, accuracy=0.5 + r / 10, loss=1.0, seconds=0.1, epsilon=0.4 * r)
        for r in (1, 2)
    ]
    return JobStatus(
        id="job-p",
        name="private",
        status="running",
        round=2,
        rounds_total=3,
        created_at=0.0,
        spec=parse_spec(spec),
        rounds=rounds,
        declined={"bo": "data does not fit: 5 features, the job has 16"},
    )


def test_under_dp_the_page_shows_what_the_status_publishes() -> None:
    job = _private_job()
    view = views.job_view(job)
    charts = {c["title"]: c["keys"] for c in view["charts"]}
    assert charts["privacy (epsilon)"] == ["epsilon", "epsilon_budget"]
    assert view["series"]["epsilon"] == [0.4, 0.8]
    assert view["series"]["epsilon_budget"] == [5.0, 5.0]
    assert "bytes" not in charts and "bytes_up" not in view["series"]  # withheld: not drawn
    assert view["progress"] == 67 and view["x"] == [1, 2]
    members = [MemberInfo(id=1, name="ana", revoked=False, online=True)]
    members.append(MemberInfo(id=2, name="bo", revoked=False, online=False))
    declines = {"bo": [("job-p", "data does not fit: 5 features, the job has 16")]}
    shown = views.members_view(members, {"ana": 3}, declines, {1: 100.0, 2: None})
    assert [m["rounds"] for m in shown] == [3, 0]
    assert shown[1]["declines"] == [("job-p", "data does not fit: 5 features, the job has 16")]
    assert shown[1]["last_seen"] == "-" and shown[0]["online"]


def test_the_members_page_counts_published_participants_and_declines(tmp_path) -> None:
    """From the participants and the jobs' declines alone (parsing every round's metrics made
    the page take seconds with long jobs); a round that published no participants (client-
    level DP) counts for no one; only the jobs asked about count."""
    import time

    from fedaas.server.db import Job, Store

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    for job_id in ("job-a", "job-b", "job-c"):
        store.add_job(
            Job(id=job_id, name="x", status="completed", spec="{}", created_at=time.time())
        )
    store.close_round("job-a", 1, {"accuracy": 0.5}, ["ana", "bo"], [])
    store.close_round("job-a", 2, {"accuracy": 0.6}, ["ana"], [])
    store.close_round("job-b", 1, {"epsilon": 0.4}, [], [])  # under DP: none published
    store.close_round("job-c", 1, {}, ["ana", "bo", "cy"], [])
    store.record_decline("job-b", "bo", "over its budget")
    store.record_decline("job-c", "cy", "no data")
    assert store.contributions(["job-a", "job-b"]) == {"ana": 2, "bo": 1}
    assert store.declines(["job-b", "job-a"]) == {"bo": [("job-b", "over its budget")]}
    assert store.contributions([]) == {} and store.declines([]) == {}
