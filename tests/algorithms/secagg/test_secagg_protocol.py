"""The whole protocol in memory: exact sums under dropouts, clean failures, honest refusals.

Ten members, one coordinator, all four stages of SecAgg (complete graph)
and SecAgg+ (sparse graph), members dropping after their masked upload.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fedaas.algorithms.secagg import (
    EncryptedShare,
    FixedPoint,
    IdentityKey,
    MaskReuse,
    ProtocolViolation,
    RoundContext,
    SecAggMember,
    SecAggParams,
    SecAggServer,
    SignatureInvalid,
    ThresholdNotMet,
    UnmaskRefused,
    UnmaskRequest,
    neighbours,
    shamir,
)
from fedaas.algorithms.secagg.keys import RoundKeyPair, sign_advertisement

N, D = 10, 4810  # the demo MLP 64-64-10 has 4,810 parameters
IDS = [f"member-{i:02d}" for i in range(N)]
IDENTITIES = {m: IdentityKey.generate() for m in IDS}
PUBLIC = {m: k.public_bytes() for m, k in IDENTITIES.items()}


class Round:
    """One secure round, stage by stage, with the true updates kept aside for checking."""

    def __init__(
        self, threshold: int, neighbors: int | None, attempt: int = 0, bits: int = 32, d: int = D
    ) -> None:
        rng = np.random.default_rng(7)
        self.encoding = FixedPoint.for_round(N, clip=1.0, max_weight=200.0)
        if bits == 64:
            self.encoding = FixedPoint.for_round(100_000, clip=1.0, max_weight=200.0)
        self.context = RoundContext("job-secagg", 3, attempt)
        self.params = SecAggParams(threshold, neighbors, self.encoding)
        self.updates = {m: self._clipped(rng.normal(size=d)) for m in IDS}
        self.weights = {m: float(rng.integers(10, 200)) for m in IDS}
        self.members = {m: SecAggMember(m, IDENTITIES[m], self.context, self.params) for m in IDS}
        self.server = SecAggServer(
            self.context, self.params, PUBLIC, self.encoding.encoded_length(d)
        )
        self.encoded: dict[str, np.ndarray] = {}
        self.masked: dict[str, np.ndarray] = {}

    @staticmethod
    def _clipped(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v) * 0.8

    def setup(self) -> dict:
        for m in IDS:
            self.server.receive_advertisement(self.members[m].advertise())
        ads = self.server.close_advertise()
        for m in IDS:
            self.server.receive_shares(m, self.members[m].share_keys(ads, PUBLIC))
        return self.server.close_share_keys()

    def upload(self, routed: dict, dropped: Iterable[str] = ()) -> UnmaskRequest:
        """Every member computes its masked input; ``dropped`` ones crash before it arrives."""
        for m in IDS:
            self.encoded[m] = self.encoding.encode(self.updates[m], self.weights[m])
            self.masked[m] = self.members[m].masked_input(routed[m], self.encoded[m])
            if m not in set(dropped):
                self.server.receive_masked_input(m, self.masked[m])
        return self.server.close_masked_input()

    def unmask(self, request: UnmaskRequest, silent: Iterable[str] = ()) -> np.ndarray:
        for m in request.survivors:
            if m not in set(silent):
                self.server.receive_unmask(self.members[m].unmask(request))
        return self.server.finish()

    def check_exact(self, total: np.ndarray, survivors: Iterable[str]) -> None:
        alive = list(survivors)
        expected = np.sum([self.encoded[m] for m in alive], axis=0, dtype=self.encoding.dtype)
        assert np.array_equal(total, expected)  # bit-exact in the integer domain
        weighted, weight = self.encoding.decode(total)
        exact = sum(self.weights[m] * self.updates[m] for m in alive)
        assert np.max(np.abs(weighted - exact)) <= self.encoding.error_bound(len(alive))
        assert weight == pytest.approx(sum(self.weights[m] for m in alive), abs=1e-3)


# SecAgg: threshold 6 of 10 (n - threshold = 4 may drop); SecAgg+: 4 neighbours, groups
# of 5, threshold 3, so any 2 dropouts are tolerated (each group keeps 3 of its 5).
CASES = [(6, None, k) for k in (0, 1, 4)] + [(3, 4, k) for k in (0, 1, 2)]


@pytest.mark.parametrize(("threshold", "neighbors", "drops"), CASES)
def test_dropouts_after_upload_still_give_the_exact_sum(
    threshold: int, neighbors: int | None, drops: int
) -> None:
    rnd = Round(threshold, neighbors)
    routed = rnd.setup()
    request = rnd.upload(routed, dropped=IDS[3 : 3 + drops])
    assert list(request.dropped) == IDS[3 : 3 + drops]
    total = rnd.unmask(request)
    rnd.check_exact(total, request.survivors)


def test_64_bit_modulus_round() -> None:
    rnd = Round(6, None, bits=64)
    request = rnd.upload(rnd.setup(), dropped=IDS[:2])
    rnd.check_exact(rnd.unmask(request), request.survivors)


def test_one_dropout_too_many_fails_cleanly() -> None:
    rnd = Round(6, None)
    with pytest.raises(
        ThresholdNotMet, match="5 members sent a masked input, fewer than the threshold 6"
    ):
        rnd.upload(rnd.setup(), dropped=IDS[:5])
    assert rnd.server.stage == "failed"
    with pytest.raises(ProtocolViolation):  # nothing more can be asked of a failed round
        rnd.server.finish()


def test_too_few_unmask_answers_release_nothing() -> None:
    rnd = Round(6, None)
    request = rnd.upload(rnd.setup(), dropped=IDS[:4])
    with pytest.raises(ThresholdNotMet, match="5 members answered the unmask stage"):
        rnd.unmask(request, silent=request.survivors[:1])
    assert rnd.server.stage == "failed"


def test_sparse_group_below_threshold_fails_with_the_member_named() -> None:
    rnd = Round(3, 4)
    graph_of = neighbours(IDS, 4, rnd.context)  # the graph every node computes
    routed = rnd.setup()
    victim = IDS[0]
    dropped = list(graph_of[victim][:3])  # 3 of victim's 4 neighbours: its group keeps 2 < 3
    request = rnd.upload(routed, dropped=dropped)
    with pytest.raises(ThresholdNotMet, match="fewer than 3 shares came back for"):
        rnd.unmask(request)


def test_honest_members_refuse_to_reveal_both_shares_of_a_peer() -> None:
    rnd = Round(6, None)
    honest = rnd.upload(rnd.setup(), dropped=IDS[:1])
    member = rnd.members[IDS[5]]
    both = UnmaskRequest(honest.survivors, (*honest.dropped, IDS[6]))
    with pytest.raises(UnmaskRefused, match="both shares of member-06"):
        member.unmask(both)
    first = member.unmask(honest)  # the refusal revealed nothing and left it usable
    assert IDS[6] in dict(first.seed_shares)
    flipped = UnmaskRequest(tuple(m for m in honest.survivors if m != IDS[6]), (IDS[0], IDS[6]))
    with pytest.raises(UnmaskRefused, match="other share of member-06 was already revealed"):
        member.unmask(flipped)
    with pytest.raises(UnmaskRefused, match="not listed as a survivor"):
        member.unmask(UnmaskRequest(tuple(m for m in IDS if m != IDS[5]), (IDS[5],)))
    with pytest.raises(UnmaskRefused, match="fewer than the threshold"):
        member.unmask(UnmaskRequest(tuple(IDS[5:10]), ()))
    padded = (*IDS[5:10], "ghost-1", "ghost-2")  # ids that never advertised don't count
    with pytest.raises(UnmaskRefused, match="5 survivors, fewer than the threshold"):
        member.unmask(UnmaskRequest(padded, ()))


def test_a_forged_key_signature_is_refused_by_members_and_coordinator() -> None:
    rnd = Round(6, None)
    ads = [rnd.members[m].advertise() for m in IDS]
    rogue = IdentityKey.generate()  # the coordinator's own key pretending to be member-02
    mine = RoundKeyPair()
    forged = sign_advertisement(rogue, rnd.context, IDS[2], mine.public, mine.public)
    tampered = [forged if a.member_id == IDS[2] else a for a in ads]
    with pytest.raises(SignatureInvalid, match="member-02"):
        rnd.members[IDS[0]].share_keys(tampered, PUBLIC)
    with pytest.raises(SignatureInvalid, match="member-02"):
        rnd.server.receive_advertisement(forged)
    old = Round(6, None, attempt=1).members[IDS[2]].advertise()  # a replay from another attempt
    with pytest.raises(SignatureInvalid):
        rnd.members[IDS[0]].share_keys([old if a.member_id == IDS[2] else a for a in ads], PUBLIC)


def test_the_coordinator_refuses_a_public_key_used_twice() -> None:
    """Members refuse a roster where one public key appears twice, so one member that copies
    a peer's key (or uses one key pair for both) under its own valid signature would fail the
    round for all: the coordinator refuses that advertisement, and the round goes on."""
    rnd = Round(6, None)
    first = rnd.members[IDS[0]].advertise()
    rnd.server.receive_advertisement(first)
    key = IDENTITIES[IDS[1]]
    mine = RoundKeyPair()
    for c, s in (
        (mine.public, mine.public),
        (first.c_public, mine.public),
        (mine.public, first.s_public),
    ):
        copied = sign_advertisement(key, rnd.context, IDS[1], c, s)
        with pytest.raises(ProtocolViolation, match="member-01 advertised a public key used twice"):
            rnd.server.receive_advertisement(copied)
    for m in IDS[1:]:
        rnd.server.receive_advertisement(rnd.members[m].advertise())
    ads = rnd.server.close_advertise()
    for m in IDS:
        rnd.server.receive_shares(m, rnd.members[m].share_keys(ads, PUBLIC))
    rnd.check_exact(rnd.unmask(rnd.upload(rnd.server.close_share_keys())), IDS)


def test_misrouted_shares_are_refused() -> None:
    rnd = Round(6, None)
    routed = rnd.setup()
    encoded = rnd.encoding.encode(rnd.updates[IDS[0]], 1.0)
    with pytest.raises(ProtocolViolation, match="is not for"):
        rnd.members[IDS[0]].masked_input(routed[IDS[1]], encoded)
    with pytest.raises(ProtocolViolation, match="two shares from"):
        rnd.members[IDS[0]].masked_input([*routed[IDS[0]], routed[IDS[0]][0]], encoded)


def _garble(share: EncryptedShare) -> EncryptedShare:
    return dataclasses.replace(share, ciphertext=share.ciphertext[:-1] + b"\x00")


def test_a_peers_share_that_does_not_decrypt_is_set_aside_and_the_sum_stays_exact() -> None:
    """One member's shares for two peers are garbled on the way (or by that member): those
    peers set them aside, mask as usual, and the others' shares rebuild its secrets. Before,
    each such peer refused the round (and left the job)."""
    rnd = Round(6, None)
    routed = rnd.setup()
    liar = IDS[3]
    for victim in IDS[:2]:
        routed[victim] = [_garble(x) if x.sender == liar else x for x in routed[victim]]
    rnd.check_exact(rnd.unmask(rnd.upload(routed)), IDS)
    assert (
        liar in rnd.members[IDS[0]].unusable
        and "authenticate" in (rnd.members[IDS[0]].unusable[liar])
    )
    assert rnd.members[IDS[2]].unusable == {}


def test_a_member_whose_shares_all_fail_fails_the_round_naming_it() -> None:
    rnd = Round(6, None)
    routed = rnd.setup()
    liar = IDS[3]
    for victim in IDS:
        routed[victim] = [_garble(x) if x.sender == liar else x for x in routed[victim]]
    request = rnd.upload(routed)
    with pytest.raises(ThresholdNotMet, match=f"fewer than 6 shares came back for {liar}"):
        rnd.unmask(request)


def test_a_member_never_sends_two_vectors_under_the_same_masks() -> None:
    rnd = Round(6, None)
    routed = rnd.setup()
    member = rnd.members[IDS[0]]
    first = member.masked_input(routed[IDS[0]], rnd.encoding.encode(rnd.updates[IDS[0]], 5.0))
    with pytest.raises(MaskReuse, match="fresh keys"):
        member.masked_input(routed[IDS[0]], rnd.encoding.encode(np.zeros(D), 5.0))
    assert member.masked_upload is first and not first.flags.writeable  # a retry resends it
    # a restarted round is a new attempt: fresh keys, different masks for the same input
    rerun = Round(6, None, attempt=1)
    again = rerun.members[IDS[0]]
    rerouted = rerun.setup()
    encoded = rnd.encoding.encode(rnd.updates[IDS[0]], 5.0)
    assert not np.array_equal(again.masked_input(rerouted[IDS[0]], encoded), first)


def test_coordinator_refuses_out_of_stage_and_malformed_inputs() -> None:
    rnd = Round(6, None)
    routed = rnd.setup()
    with pytest.raises(ProtocolViolation, match="stage"):
        rnd.server.receive_advertisement(rnd.members[IDS[0]].advertise())
    y = rnd.members[IDS[0]].masked_input(routed[IDS[0]], rnd.encoding.encode(np.zeros(D), 1.0))
    with pytest.raises(ProtocolViolation, match="length"):
        rnd.server.receive_masked_input(IDS[0], y[:-1])
    rnd.server.receive_masked_input(IDS[0], y)
    with pytest.raises(ProtocolViolation, match="already"):
        rnd.server.receive_masked_input(IDS[0], y)


def test_no_masked_vector_correlates_with_its_members_update() -> None:
    """What the coordinator receives from one member looks uniform next to its update."""
    rnd = Round(6, None)
    rnd.upload(rnd.setup())
    bound = 5 / np.sqrt(D)  # |corr| of independent vectors has sd ~ 1/sqrt(D)
    for m in IDS:
        masked = rnd.masked[m].view(np.int32)[:-1].astype(float)
        assert abs(np.corrcoef(masked, rnd.updates[m])[0, 1]) < bound
        encoded = rnd.encoded[m].view(np.int32)[:-1].astype(float)
        assert np.corrcoef(encoded, rnd.updates[m])[0, 1] > 0.99  # the test can fail: unmasked does


@settings(max_examples=25, deadline=None)
@given(
    graph=st.sampled_from([(6, None), (3, 4), (4, 6), (4, 5)]),
    dropped=st.sets(st.sampled_from(IDS), max_size=5),
    silent=st.sets(st.sampled_from(IDS), max_size=2),
)
def test_any_dropout_pattern_gives_the_exact_sum_or_a_clean_failure(
    graph: tuple[int, int | None], dropped: set[str], silent: set[str]
) -> None:
    """Never a wrong sum: exact when every secret has ``threshold`` shares back, else refused."""
    threshold, k = graph
    rnd = Round(threshold, k, d=64)
    routed = rnd.setup()
    peers = neighbours(IDS, k, rnd.context)
    answering = set(IDS) - dropped - silent
    recoverable = len(IDS) - len(dropped) >= threshold and len(answering) >= threshold
    recoverable = recoverable and all(len(({m, *peers[m]}) & answering) >= threshold for m in IDS)
    try:
        request = rnd.upload(routed, dropped=sorted(dropped))
        total = rnd.unmask(request, silent=silent)
    except ThresholdNotMet:
        event("refused")
        assert not recoverable and rnd.server.stage == "failed"
        return
    event("recovered")
    assert recoverable
    rnd.check_exact(total, request.survivors)


def test_a_roster_without_the_members_own_keys_or_with_duplicates_is_refused() -> None:
    rnd = Round(6, None)
    ads = [rnd.members[m].advertise() for m in IDS]
    other = Round(6, None).members[IDS[0]].advertise()  # validly signed, but not this object's keys
    with pytest.raises(ProtocolViolation, match="not its own"):
        rnd.members[IDS[0]].share_keys([other, *ads[1:]], PUBLIC)
    with pytest.raises(ProtocolViolation, match="advertised twice"):
        rnd.members[IDS[0]].share_keys([*ads, ads[3]], PUBLIC)
    with pytest.raises(ThresholdNotMet):
        rnd.members[IDS[0]].share_keys(ads[:5], PUBLIC)
    rnd.members[IDS[0]].share_keys(ads, PUBLIC)
    with pytest.raises(ProtocolViolation, match="already answered"):
        rnd.members[IDS[0]].share_keys(ads, PUBLIC)


def _answer_with_one_forged_share(
    rnd: Round,
    request: UnmaskRequest,
    kind: str,
    forge: Callable[[int], int],
    silent: Iterable[str] = (),
) -> str:
    """The survivors answer the unmask stage (but ``silent`` ones); the first one's first
    ``kind`` share (seed or key) has its value replaced by ``forge(value)``. Returns whose
    secret that share was of."""
    first, *rest = request.survivors
    answer = rnd.members[first].unmask(request)
    field = f"{kind}_shares"
    owner, share = getattr(answer, field)[0]
    x, y = shamir.share_from_bytes(share)
    forged = shamir.share_to_bytes((x, forge(y)))
    others = tuple(getattr(answer, field)[1:])
    rnd.server.receive_unmask(dataclasses.replace(answer, **{field: ((owner, forged), *others)}))
    for m in rest:
        if m not in set(silent):
            rnd.server.receive_unmask(rnd.members[m].unmask(request))
    return owner


@pytest.mark.parametrize("kind", ["seed", "key"])
def test_one_wrong_share_is_left_out_and_its_sender_named(kind: str) -> None:
    """A survivor answers the unmask stage with one made-up share (a survivor's seed, or a
    dropped member's mask key). With two spare shares, the one whose removal makes the rest
    agree is left out: the sum is exact and the liar named. Before, a wrong seed share left
    a pseudorandom mask in the published model (6.8 against weights of 0.27 after three
    rounds, in a review) and a wrong key share failed the round."""
    rnd = Round(6, None)
    request = rnd.upload(rnd.setup(), dropped=IDS[:1])
    liar = request.survivors[0]
    owner = _answer_with_one_forged_share(
        rnd, request, kind, lambda _: secrets.randbelow(shamir.PRIME)
    )
    rnd.check_exact(rnd.server.finish(), request.survivors)
    assert rnd.server.wrong_shares == [(liar, owner, kind)]


@pytest.mark.parametrize(
    ("kind", "why"),
    [("seed", "the recovered sum is impossible, a share was"), ("key", "do not match its")],
)
def test_a_wrong_share_without_spares_fails_the_round_instead_of_a_wrong_sum(
    kind: str, why: str
) -> None:
    """Only ``threshold`` answers come back, so nothing can be checked share by share: a
    wrong key share is caught by the advertised key, a wrong seed share by the sum."""
    rnd = Round(6, None)
    request = rnd.upload(rnd.setup(), dropped=IDS[:1])
    silent = request.survivors[6:]  # 6 of the 9 survivors answer: exactly the threshold
    _answer_with_one_forged_share(
        rnd, request, kind, lambda _: secrets.randbelow(shamir.PRIME), silent=silent
    )
    with pytest.raises(ThresholdNotMet, match=why):
        rnd.server.finish()
    assert rnd.server.stage == "failed"


def test_a_malformed_unmask_answer_is_refused_whole() -> None:
    rnd = Round(6, None)
    request = rnd.upload(rnd.setup(), dropped=IDS[:1])
    answer = rnd.members[request.survivors[0]].unmask(request)
    (peer, _), *rest = answer.key_shares
    bad = dataclasses.replace(answer, key_shares=((peer, b"\x00" * 5), *rest))
    with pytest.raises(ProtocolViolation, match="share of"):
        rnd.server.receive_unmask(bad)
    stolen = dataclasses.replace(answer, seed_shares=((IDS[0], answer.seed_shares[0][1]),))
    with pytest.raises(ProtocolViolation, match="may not"):  # a seed share of a dropped member
        rnd.server.receive_unmask(stolen)
    for m in request.survivors:  # nothing of the refused answers was kept
        rnd.server.receive_unmask(rnd.members[m].unmask(request))
    rnd.check_exact(rnd.server.finish(), request.survivors)


def test_the_coordinator_state_holds_nothing_that_correlates_with_one_update() -> None:
    """Everything the coordinator object keeps before the unmask, read back like a curious one."""
    rnd = Round(6, None)
    request = rnd.upload(rnd.setup(), dropped=IDS[:2])
    arrays = [v for v in vars(rnd.server).values() if isinstance(v, np.ndarray)]
    assert arrays  # the running sum is there
    bound = 5 / np.sqrt(D)
    for kept in arrays:
        values = kept.view(np.int32)[:-1].astype(float)
        for m in IDS:
            assert abs(np.corrcoef(values, rnd.updates[m])[0, 1]) < bound
    total = rnd.unmask(request)  # only the sum comes out, and it is right
    rnd.check_exact(total, request.survivors)


def test_the_sum_is_recoverable_only_once_every_needed_secret_has_enough_shares() -> None:
    rnd = Round(3, 4)  # SecAgg+: groups of 5, threshold 3
    dropped = IDS[0]
    request = rnd.upload(rnd.setup(), dropped=[dropped])
    ads = {m: rnd.members[m].advertise() for m in IDS}
    holders = sorted(neighbours(ads, rnd.params.neighbors, rnd.context)[dropped])
    others = [m for m in request.survivors if m not in holders]
    assert len(others) >= rnd.params.threshold
    for m in others:  # more answers than the threshold, none with a share of the dropped key
        rnd.server.receive_unmask(rnd.members[m].unmask(request))
    assert not rnd.server.recoverable()
    for m in holders[: rnd.params.threshold]:
        rnd.server.receive_unmask(rnd.members[m].unmask(request))
    assert rnd.server.recoverable()
    rnd.check_exact(rnd.server.finish(), request.survivors)


def test_shares_made_ahead_take_the_rounds_encoding_but_not_another_threshold() -> None:
    rnd = Round(threshold=6, neighbors=None)
    routed = rnd.setup()  # the shares were made before the round's encoding was known
    member = rnd.members[IDS[0]]
    wide = FixedPoint.for_round(100_000, clip=1.0, max_weight=200.0)
    with pytest.raises(ProtocolViolation, match="threshold or neighbours"):
        member.bind(SecAggParams(5, None, wide))  # fewer shares would open its secrets
    with pytest.raises(ProtocolViolation, match="threshold or neighbours"):
        member.bind(SecAggParams(6, 4, wide))
    member.bind(SecAggParams(6, None, wide))
    masked = member.masked_input(routed[IDS[0]], wide.encode(rnd.updates[IDS[0]], 10.0))
    assert masked.dtype == np.uint64  # stage 3 under the encoding bound last
    with pytest.raises(MaskReuse):
        member.bind(SecAggParams(6, None, rnd.encoding))
