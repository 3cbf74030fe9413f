"""The Prometheus registry shows what a job's status publishes, nothing more (fast, in-process)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from fedaas.protocol import JobStatus, RoundRecord
from fedaas.server.metrics import Metrics
from fedaas.spec import parse_spec
from fixtures.specs import make_spec


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_under_client_level_dp_no_byte_counts_and_the_published_epsilon() -> None:
    spec = make_spec("dp", rounds=5, privacy={"mechanism": "gaussian", "noise_multiplier": 1.0})
    record = RoundRecord(round=1, accuracy=0.6, loss=0.9, seconds=2.0, epsilon=0.5)
    job = JobStatus(
        id="job-dp",
        name="dp",
        status="running",
        round=1,
        rounds_total=5,
        created_at=0.0,
        spec=parse_spec(spec),
        rounds=[record],
    )
    metrics = Metrics()
    metrics.live(lambda: (2, 3, {"running": 1}))
    metrics.round_closed(job, record)
    metrics.upload(True)
    metrics.upload(False, "invalid_update")
    samples = _samples(metrics)
    assert samples[("fedaas_rounds_completed_total", (("job", "job-dp"),))] == 1
    assert samples[("fedaas_round_duration_seconds_sum", ())] == 2.0
    assert samples[("fedaas_job_epsilon", (("job", "job-dp"),))] == 0.5
    assert samples[("fedaas_job_accuracy", (("job", "job-dp"),))] == 0.6
    assert not [name for name, _ in samples if name.startswith("fedaas_bytes")]  # withheld
    assert (
        samples[("fedaas_uploads_total", (("outcome", "rejected"), ("reason", "invalid_update")))]
        == 1
    )
    assert samples[("fedaas_members_online", ())] == 2
    assert samples[("fedaas_jobs", (("status", "running"),))] == 1
