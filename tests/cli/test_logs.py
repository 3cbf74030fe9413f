"""``--log-format json``: one JSON object per line, with the events' structured fields.

The coordinator's operator lines (:class:`fedaas.server.observer.LogLines`)
go through the JSON formatter and keep their fields (job, round, members,
seconds, metrics); a real ``fedaas --log-format json server`` writes its
start-up line as JSON; a bad format is refused in one line.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedaas.cli.logs import JsonFormatter
from fedaas.protocol import JobStatus, RoundRecord
from fedaas.server.observer import LogLines
from fedaas.spec import parse_spec
from fixtures.specs import make_spec


def _job(status: str = "running") -> JobStatus:
    record = RoundRecord(
        round=1,
        accuracy=0.5,
        loss=1.25,
        clients=2,
        seconds=1.5,
        bytes_up=10,
        bytes_down=20,
        participants=["ana", "bo"],
        epsilon=0.75,
    )
    return JobStatus(
        id="job-abc",
        name="logged",
        status=status,  # type: ignore[arg-type]
        reason="quorum not met" if status == "failed" else None,
        round=1,
        rounds_total=3,
        created_at=0.0,
        started_at=1.0,
        spec=parse_spec(make_spec("logged", rounds=3)),
        rounds=[record],
    )


def test_operator_events_as_json_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fedaas.coordinator")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        lines = LogLines()
        job = _job()
        lines.job_started(job)
        lines.round_closed(job, job.rounds[0])
        lines.member_changed("ana", False)
        lines.job_finished(_job("failed"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in entries] == [
        "job_started",
        "round_closed",
        "member_offline",
        "job_finished",
    ]
    round_line = entries[1]
    assert round_line["message"] == (
        "job job-abc round 1/3: 2 member(s), 1.50 s, accuracy=0.5000 loss=1.2500 epsilon=0.75"
    )
    assert round_line["job"] == "job-abc" and round_line["round"] == 1
    assert round_line["members"] == 2 and round_line["metrics"]["epsilon"] == 0.75
    assert round_line["level"] == "INFO" and round_line["time"].endswith("Z")
    assert entries[3]["level"] == "WARNING" and "quorum not met" in entries[3]["message"]


def test_the_server_logs_json_when_asked(tmp_path: Path) -> None:
    env = {**os.environ, "FEDAAS_ADMIN_TOKEN": "fda_" + "x" * 40}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedaas", "--log-format", "json", "server"]
            + ["--state", str(tmp_path / "state"), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "state" / "endpoint.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    first = json.loads(log.read_text().splitlines()[0])
    assert first["message"].startswith("fedaas coordinator on http://127.0.0.1:")
    assert env["FEDAAS_ADMIN_TOKEN"] not in log.read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "fedaas", "--log-format", "xml", "members"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "use text or json" in bad.stderr


def test_a_storage_library_failure_is_one_line_without_its_traceback() -> None:
    """gcsfs logs a traceback each time a request runs out of retries; fedaas reports that
    failure itself in one line, so the library's record keeps its line and loses the
    traceback (kept with ``--verbose``)."""
    script = (
        "import sys; from fedaas.cli.common import setup_logging; import gcsfs.retry\n"
        "setup_logging(verbose=sys.argv[1] == 'verbose')\n"
        "try:\n"
        "    raise TimeoutError('Timeout on reading data from socket')\n"
        "except TimeoutError as e:\n"
        "    gcsfs.retry.logger.exception(f'_request out of retries on exception: {e}')\n"
    )
    out = {
        mode: subprocess.run(
            [sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=60
        ).stderr
        for mode in ("quiet", "verbose")
    }
    assert out["quiet"].count("\n") == 1, out["quiet"]
    assert "ERROR _request out of retries on exception: Timeout on reading" in out["quiet"]
    assert "Traceback" not in out["quiet"] and "Traceback" in out["verbose"]
