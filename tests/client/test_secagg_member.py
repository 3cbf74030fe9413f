"""The member's own guards in a secure round: its identity key, the sessions it took part in,
the peers' long-term keys it saw, and the downgrade to a plain upload it refuses."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedaas.algorithms.secagg import (
    IdentityKey,
    MaskReuse,
    ProtocolViolation,
    SignatureInvalid,
    ThresholdNotMet,
    UnmaskRefused,
)
from fedaas.client.secagg import SecureTraining, secure_train
from fedaas.client.secagg_state import SecureRefused, SecureState, load_identity
from fedaas.protocol import Task
from fedaas.protocol_secagg import RosterEntry, SecureRoster
from fedaas.spec import parse_spec
from fixtures.specs import make_spec


def test_the_identity_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    key = load_identity(tmp_path)
    assert stat.S_IMODE((tmp_path / "secagg-identity.key").stat().st_mode) == 0o600
    assert load_identity(tmp_path).public_bytes() == key.public_bytes()


def test_a_member_never_takes_part_twice_in_the_same_session(tmp_path: Path) -> None:
    state = SecureState(tmp_path, "https://coordinator")
    state.note_attempt("job-1", 3, 77)
    state.note_attempt("job-1", 3, 78)  # a rerun of the round: a new attempt
    state.note_attempt("job-1", 4, 77)
    with pytest.raises(SecureRefused, match="reuses attempt 77"):
        state.note_attempt("job-1", 3, 77)
    restarted = SecureState(tmp_path, "https://coordinator")  # read back from the log
    with pytest.raises(SecureRefused, match="reuses attempt 78"):
        restarted.note_attempt("job-1", 3, 78)


def test_the_session_log_is_compacted_to_the_newest(tmp_path: Path) -> None:
    from fedaas.client import secagg_state

    state = SecureState(tmp_path, "https://coordinator")
    for n in range(2 * secagg_state.KEEP_ATTEMPTS + 1):
        state.note_attempt("job-1", n + 1, 5)
    kept = (tmp_path / secagg_state.ATTEMPTS_FILE).read_text().split()
    assert len(kept) == secagg_state.KEEP_ATTEMPTS
    assert kept[-1] == f"job-1/{2 * secagg_state.KEEP_ATTEMPTS + 1}/5"
    with pytest.raises(SecureRefused):  # the newest are still refused after a restart
        SecureState(tmp_path, "x").note_attempt("job-1", 2 * secagg_state.KEEP_ATTEMPTS + 1, 5)


def test_keys_sent_ahead_serve_only_their_own_session_and_once(tmp_path: Path) -> None:
    from fedaas.algorithms.secagg import RoundContext

    state = SecureState(tmp_path, "https://coordinator")
    ahead = RoundContext("job-1", 4, 99)
    keys = state.advertise_ahead(ahead, "alpha")
    assert state.take_ahead(RoundContext("job-1", 4, 98)) is None  # another attempt: dropped
    assert state.take_ahead(ahead) is None  # and not kept for later
    state.advertise_ahead(RoundContext("job-1", 5, 7), "alpha")
    secrets = state.take_ahead(RoundContext("job-1", 5, 7))
    assert secrets is not None and state.take_ahead(RoundContext("job-1", 5, 7)) is None
    assert keys.c_public != secrets.c.public  # fresh keys for every session
    with pytest.raises(SecureRefused):  # the session was noted when its keys went out
        state.note_attempt("job-1", 4, 99)


def _roster(**identities: bytes) -> SecureRoster:
    entries = [
        RosterEntry(
            member=name, identity=key, c_public=bytes(32), s_public=bytes(32), signature=bytes(64)
        )
        for name, key in identities.items()
    ]
    return SecureRoster(job_id="job-1", round=1, attempt=1, members=entries)


def test_a_peer_whose_long_term_key_changes_is_refused(tmp_path: Path) -> None:
    a, b = IdentityKey.generate().public_bytes(), IdentityKey.generate().public_bytes()
    state = SecureState(tmp_path, "https://one")
    state.check_peers(_roster(alpha=a, beta=b))
    state.check_peers(_roster(alpha=a, beta=b, gamma=bytes(32)))  # a new peer: pinned
    with pytest.raises(SecureRefused, match="other long-term keys for beta"):
        state.check_peers(_roster(alpha=a, beta=IdentityKey.generate().public_bytes()))
    with pytest.raises(SecureRefused, match="beta"):  # pinned on disk: after a restart too
        SecureState(tmp_path, "https://one").check_peers(_roster(beta=a))


def test_peers_are_pinned_per_coordinator(tmp_path: Path) -> None:
    a, b = IdentityKey.generate().public_bytes(), IdentityKey.generate().public_bytes()
    SecureState(tmp_path, "https://one").check_peers(_roster(alpha=a))
    SecureState(tmp_path, "https://two").check_peers(_roster(alpha=b))  # another federation
    with pytest.raises(SecureRefused, match="alpha"):
        SecureState(tmp_path, "https://two").check_peers(_roster(alpha=a))


def _train_task(spec: Any, number: int, secure: Any = None) -> Task:
    return Task(
        job_id="job-1",
        round=number,
        stage="train",
        model_round=number - 1,
        model_etag=f'"job-1-r{number - 1}"',
        deadline_in=10,
        max_upload_bytes=1000,
        spec=spec,
        secure=secure,
    )


def test_a_secure_job_is_never_downgraded_to_a_plain_upload() -> None:
    spec = parse_spec(make_spec(clients=3, min_clients=2, secure_aggregation={"enabled": True}))
    task = _train_task(spec, 1)
    called = []
    agent = SimpleNamespace(_train=lambda *args: called.append(args))
    with pytest.raises(SecureRefused, match="no secure session"):
        secure_train(agent, task, SimpleNamespace(spec=spec), {})
    assert called == []  # nothing was trained, nothing sent in the clear
    plain = parse_spec(make_spec(clients=3, min_clients=2))
    secure_train(agent, task, SimpleNamespace(spec=plain), {})
    assert len(called) == 1


@pytest.mark.parametrize(
    ("fault", "stays"),
    [
        (ProtocolViolation("two advertisements carry the same public key"), True),
        (SignatureInvalid("m3's keys are not signed by its identity key"), True),
        (ThresholdNotMet("m0 got shares from 1 neighbours"), True),
        (UnmaskRefused("asked for both shares of m2"), False),
        (MaskReuse("m0 already sent a masked input under these round keys"), False),
    ],
)
def test_a_bad_roster_or_peer_sits_the_round_out_a_bad_coordinator_request_leaves(
    monkeypatch: pytest.MonkeyPatch, fault: Exception, stays: bool
) -> None:
    """What one peer can cause (a roster with a copied key, a peer's bad signature) costs this
    member one round, not the job; what only the coordinator can ask (both shares of a peer,
    a second masked input) still ends in a decline (the agent turns the raise into one)."""
    spec = parse_spec(make_spec(clients=3, min_clients=2, secure_aggregation={"enabled": True}))

    def run(self: SecureTraining) -> None:
        raise fault

    monkeypatch.setattr(SecureTraining, "__init__", lambda self, *args: None)
    monkeypatch.setattr(SecureTraining, "run", run)
    waited: list[float] = []
    agent = SimpleNamespace(stop=SimpleNamespace(wait=waited.append))
    task = _train_task(spec, 1).model_copy(update={"secure": SimpleNamespace()})  # no checks
    if stays:
        assert secure_train(agent, task, SimpleNamespace(spec=spec), {}) is None
        assert waited == [1.0]
    else:
        with pytest.raises(type(fault)):
            secure_train(agent, task, SimpleNamespace(spec=spec), {})


def test_a_member_that_requires_secure_aggregation_declines_jobs_without_it() -> None:
    from fedaas.client.policy import MemberPolicy

    policy = MemberPolicy.model_validate({"privacy": {"secure_aggregation": True}})
    plain = parse_spec(make_spec(clients=3, min_clients=2))
    secure = parse_spec(make_spec(clients=3, min_clients=2, secure_aggregation={"enabled": True}))
    assert any("no [secure_aggregation]" in p for p in policy.problems(plain))
    assert policy.problems(secure) == []


def test_a_member_that_restarted_after_sending_keys_ahead_sits_the_round_out(
    tmp_path: Path,
) -> None:
    import threading

    from fedaas.algorithms.secagg import RoundContext
    from fedaas.client.secagg import SecureTraining
    from fedaas.protocol_secagg import SecureSession

    spec = parse_spec(make_spec(clients=3, min_clients=2, secure_aggregation={"enabled": True}))
    SecureState(tmp_path, "https://c").advertise_ahead(RoundContext("job-1", 2, 41), "alpha")
    restarted = SecureState(tmp_path, "https://c")  # the secrets were in memory only: gone
    restarted.registered = True
    sent: list[Any] = []
    stop = threading.Event()
    stop.set()  # no back-off in the test
    agent = SimpleNamespace(
        secure=restarted, t=SimpleNamespace(request=lambda *a, **k: sent.append(a)), stop=stop
    )
    session = SecureSession(
        attempt=41, member="alpha", sampled=3, bits=32, scale=2.0**16, clip=10.0, max_weight=1e4
    )
    task = _train_task(spec, 2, session)
    # the same session offered again: no keys, no decline, nothing sent; the job goes on
    assert SecureTraining(agent, task, SimpleNamespace(spec=spec), {}).run() is None
    assert sent == []
    restarted.note_attempt("job-1", 3, 7)  # the next round's session is a fresh one


# stages 1 and 2 of the next round, done during this one ----------------------------------------
def _ahead_setup(tmp_path: Path) -> tuple[Any, SecureState, Any]:
    """Member alpha in round 1 of a secure job (3 sampled; the next round's attempt 41), and
    a roster maker for round 2: alpha's keys sent ahead plus honest peers beta and gamma."""
    import threading

    from fedaas.algorithms.secagg import RoundContext
    from fedaas.algorithms.secagg.member import RoundSecrets
    from fedaas.client.secagg import SecureTraining
    from fedaas.protocol_secagg import SecureSession

    spec = parse_spec(
        make_spec("ahead", 3, clients=3, min_clients=2, secure_aggregation={"enabled": True})
    )
    state = SecureState(tmp_path, "https://c")
    state.registered = True
    sent: list[Any] = []  # what reached the coordinator
    transport = SimpleNamespace(request=lambda *a, **k: sent.append(a))
    agent = SimpleNamespace(secure=state, stop=threading.Event(), t=transport, sent=sent)
    session = SecureSession(
        attempt=40, member="alpha", sampled=3, bits=32, scale=2.0**16, clip=10.0,
        max_weight=1e4, next_attempt=41,
    )  # fmt: skip
    training = SecureTraining(agent, _train_task(spec, 1, session), SimpleNamespace(spec=spec), {})
    peers = {m: IdentityKey.generate() for m in ("beta", "gamma")}

    def roster(keys: Any, attempt: int = 41) -> SecureRoster:
        context = RoundContext("job-1", 2, attempt)
        entries = [
            RosterEntry(
                member="alpha", identity=state.identity.public_bytes(), c_public=keys.c_public,
                s_public=keys.s_public, signature=keys.signature,
            )
        ]  # fmt: skip
        for name, key in peers.items():
            ad = RoundSecrets().advertise(key, context, name)
            entries.append(
                RosterEntry(
                    member=name, identity=key.public_bytes(), c_public=ad.c_public,
                    s_public=ad.s_public, signature=ad.signature,
                )
            )  # fmt: skip
        return SecureRoster(job_id="job-1", round=2, attempt=attempt, members=entries)

    return training, state, roster


def test_a_member_shares_ahead_once_and_only_for_the_session_its_keys_are_signed_for(
    tmp_path: Path,
) -> None:
    training, state, roster = _ahead_setup(tmp_path)
    keys = training._keys_ahead(41)
    assert keys is not None
    sent = training._share_ahead(roster(keys))
    assert sent is not None
    assert sorted(s.recipient for s in sent.shares) == ["beta", "gamma"]
    assert state.pending is not None and state.pending.context.attempt == 41
    # the same keys for another roster: never (two share sets of one secret could open it)
    assert training._share_ahead(roster(keys)) is None
    assert training._keys_ahead(41) is None  # nor new keys for a session it already keyed
    # a roster for another attempt than the one the keys are signed for
    keys = training._keys_ahead(42)
    assert training._share_ahead(roster(keys, attempt=43)) is None
    # a roster that carries other keys for this member than the ones it sent
    training._keys_ahead(44)
    assert training._share_ahead(roster(keys, attempt=44)) is None
    assert state.pending is not None and state.pending.shares == sent  # untouched by refusals


def test_a_round_shared_ahead_goes_on_only_in_its_own_session_and_sample(
    tmp_path: Path,
) -> None:
    from fedaas.algorithms.secagg import RoundContext
    from fedaas.client.secagg import SecureTraining
    from fedaas.protocol_secagg import SecureSession

    training, state, roster = _ahead_setup(tmp_path)
    assert training._share_ahead(roster(training._keys_ahead(41))) is not None
    # a coordinator that opens round 2 under another attempt gets fresh keys: nothing of the
    # session shared ahead is reused
    assert state.take_pending(RoundContext("job-1", 2, 77)) is None and state.pending is None
    assert training._share_ahead(roster(training._keys_ahead(45), attempt=45)) is not None
    spec = training.ctx.spec
    session = SecureSession(
        attempt=45, member="alpha", sampled=4, bits=32, scale=2.0**16, clip=10.0, max_weight=1e4
    )  # one more sampled than the roster it shared with: another threshold
    later = SecureTraining(training.agent, _train_task(spec, 2, session), training.ctx, {})
    with pytest.raises(SecureRefused, match="shared its keys with 3"):
        later.run()
    assert training.agent.sent == []  # nothing trained, nothing sent
    with pytest.raises(SecureRefused, match="reuses attempt 45"):  # nor run afresh in it
        state.note_attempt("job-1", 2, 45)
