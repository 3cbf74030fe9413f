"""The coordinator's side of one secure round: it relays, sums and unmasks, and sees only the sum.

Follows Bonawitz et al. (CCS 2017, figure 4) with SecAgg+ neighbourhoods
(Bell et al., CCS 2020). ``U1`` advertised keys, ``U2`` shared keys,
``U3`` uploaded a masked input (the survivors). Masked inputs are added
into one running sum modulo 2^k as they arrive (one model of memory; no
vector is kept). At the end it reconstructs ``b_v`` for every survivor
and ``s_u^SK`` for every member of ``U2 - U3`` (recomputing its pairwise
masks with its surviving neighbours), removes the masks and returns the
sum. If fewer than ``threshold`` members answer a stage, or some secret
gets fewer than ``threshold`` shares, the round fails with
:class:`ThresholdNotMet` and releases nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedaas.algorithms.secagg import shamir
from fedaas.algorithms.secagg.errors import ProtocolViolation, SignatureInvalid, ThresholdNotMet
from fedaas.algorithms.secagg.graph import Graph, check_groups, neighbours
from fedaas.algorithms.secagg.keys import RoundKeyPair, mask_seed, verify_advertisement
from fedaas.algorithms.secagg.member import share_points
from fedaas.algorithms.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    RoundContext,
    SecAggParams,
    UnmaskRequest,
    UnmaskResponse,
)
from fedaas.algorithms.secagg.prg import add_mask

_MAX_SEALED = 1024


class SecAggServer:
    """One secure round on the coordinator; stages close explicitly (at a deadline or when all answered)."""

    def __init__(
        self,
        context: RoundContext,
        params: SecAggParams,
        identities: Mapping[str, bytes],
        length: int,
    ) -> None:
        if length < 1:
            raise ValueError("the encoded length is >= 1")
        self.context, self.params, self.length = context, params, length
        self._identities = dict(identities)
        self.stage = "advertise"
        self._ads: dict[str, KeyAdvertisement] = {}
        self._graph: Graph = {}
        self._points: dict[str, int] = {}
        self._shares: dict[str, list[EncryptedShare]] = {}
        self._sum = np.zeros(length, dtype=params.encoding.dtype)
        self._survivors: set[str] = set()
        self._request: UnmaskRequest | None = None
        self._seed_shares: dict[str, dict[str, shamir.Share]] = {}
        self._key_shares: dict[str, dict[str, shamir.Share]] = {}
        self.wrong_shares: list[tuple[str, str, str]] = []
        """``(holder, owner, kind)`` of each share found wrong and left out by :meth:`finish`."""
        self._answered: set[str] = set()

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise ProtocolViolation(f"the round is at stage {self.stage!r}, not {stage!r}")

    def _fail(self, message: str) -> ThresholdNotMet:
        self.stage = "failed"
        self._sum = np.zeros(0, dtype=self._sum.dtype)
        return ThresholdNotMet(message)

    def _need(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            raise self._fail(
                f"{count} members {what}, fewer than the threshold {self.params.threshold}"
            )

    # stage 1
    def register(self, member_id: str, identity: bytes) -> None:
        """A member's long-term key learned after the round began (before it advertises)."""
        self._expect("advertise")
        if self._identities.get(member_id, identity) != identity or member_id in self._ads:
            raise ProtocolViolation(f"{member_id}'s identity key is already in use this round")
        self._identities[member_id] = identity

    def receive_advertisement(self, ad: KeyAdvertisement) -> None:
        self._expect("advertise")
        if ad.member_id not in self._identities:
            raise SignatureInvalid(f"{ad.member_id} has no registered identity key")
        if ad.member_id in self._ads:
            raise ProtocolViolation(f"{ad.member_id} already advertised keys this round")
        verify_advertisement(ad, self._identities[ad.member_id], self.context)
        # every member refuses a roster where a public key appears twice: one member's copy
        # (of its own other key, or of a peer's, signed with its identity) would fail the round
        taken = {k for other in self._ads.values() for k in (other.c_public, other.s_public)}
        if ad.c_public == ad.s_public or {ad.c_public, ad.s_public} & taken:
            raise ProtocolViolation(f"{ad.member_id} advertised a public key used twice")
        self._ads[ad.member_id] = ad

    def close_advertise(self) -> list[KeyAdvertisement]:
        """``U1``'s advertisements (sorted by id), to send to every member of ``U1``."""
        self._expect("advertise")
        self._need(len(self._ads), "advertised keys")
        self._graph = neighbours(self._ads, self.params.neighbors, self.context)
        self._points = share_points(self._ads)
        try:
            check_groups(self._graph, self.params.threshold)
        except (ProtocolViolation, ThresholdNotMet) as exc:
            raise self._fail(str(exc)) from exc
        self.stage = "share_keys"
        return [self._ads[m] for m in sorted(self._ads)]

    # stage 2
    def receive_shares(self, sender: str, shares: Sequence[EncryptedShare]) -> None:
        self._expect("share_keys")
        if sender not in self._graph or sender in self._shares:
            raise ProtocolViolation(f"{sender} may not send shares now")
        recipients = sorted(s.recipient for s in shares)
        if recipients != list(self._graph[sender]) or any(s.sender != sender for s in shares):
            raise ProtocolViolation(f"{sender} must send one share to each of its neighbours")
        if any(len(s.ciphertext) > _MAX_SEALED for s in shares):
            raise ProtocolViolation(f"an encrypted share from {sender} is too large")
        self._shares[sender] = list(shares)

    def close_share_keys(self) -> dict[str, list[EncryptedShare]]:
        """``U2``: for each member of ``U2``, the shares addressed to it by others of ``U2``."""
        self._expect("share_keys")
        self._need(len(self._shares), "shared keys")
        out: dict[str, list[EncryptedShare]] = {m: [] for m in sorted(self._shares)}
        for sender in sorted(self._shares):
            for share in self._shares[sender]:
                if share.recipient in out:
                    out[share.recipient].append(share)
        self.stage = "masked_input"
        return out

    # stage 3
    def receive_masked_input(self, member_id: str, masked: np.ndarray) -> None:
        """Add one masked input into the running sum (it is not kept)."""
        self._expect("masked_input")
        if member_id not in self._shares:
            raise ProtocolViolation(f"{member_id} did not share keys this round")
        if member_id in self._survivors:
            raise ProtocolViolation(f"{member_id} already sent its masked input")
        dtype = self.params.encoding.dtype
        if (
            not isinstance(masked, np.ndarray)
            or masked.dtype != dtype
            or masked.shape != (self.length,)
        ):
            raise ProtocolViolation(f"a masked input is a {dtype} vector of length {self.length}")
        np.add(self._sum, masked, out=self._sum)
        self._survivors.add(member_id)

    def close_masked_input(self) -> UnmaskRequest:
        """The unmask request for every survivor."""
        self._expect("masked_input")
        self._need(len(self._survivors), "sent a masked input")
        dropped = sorted(set(self._shares) - self._survivors)
        self._request = UnmaskRequest(tuple(sorted(self._survivors)), tuple(dropped))
        self.stage = "unmask"
        return self._request

    # stage 4
    def receive_unmask(self, response: UnmaskResponse) -> None:
        self._expect("unmask")
        assert self._request is not None
        member = response.member_id
        if member not in self._survivors or member in self._answered:
            raise ProtocolViolation(f"{member} may not answer the unmask stage now")
        group = {*self._graph[member], member}
        point = self._points[member]
        checked = []  # validate the whole answer before keeping any of it
        for kind, pairs, allowed, store in (
            ("seed", response.seed_shares, self._request.survivors, self._seed_shares),
            ("key", response.key_shares, self._request.dropped, self._key_shares),
        ):
            peers = [p for p, _ in pairs]
            if len(set(peers)) != len(peers) or not set(peers) <= group & set(allowed):
                raise ProtocolViolation(f"{member} sent {kind} shares for members it may not")
            for peer, raw in pairs:
                try:
                    share = shamir.share_from_bytes(raw)
                except ValueError as exc:
                    raise ProtocolViolation(f"{member}'s share of {peer}: {exc}") from exc
                if share[0] != point:
                    raise ProtocolViolation(f"{member}'s share of {peer} is not at its point")
                checked.append((store, peer, share))
        for store, peer, share in checked:
            store.setdefault(peer, {})[member] = share
        self._answered.add(member)

    def recoverable(self) -> bool:
        """Whether the unmask answers so far hold ``threshold`` shares of every secret needed:
        each survivor's seed and each dropped member's mask key. In SecAgg+ a count of
        answers is not enough: a dropped member's key is only with its own neighbours."""
        if self.stage != "unmask" or self._request is None:
            return False
        t = self.params.threshold
        return all(len(self._seed_shares.get(m, {})) >= t for m in self._request.survivors) and all(
            len(self._key_shares.get(m, {})) >= t for m in self._request.dropped
        )

    def _combine(self, owner: str, kind: str, held: Mapping[str, shamir.Share]) -> bytes:
        """``owner``'s secret from the shares its peers ``held``; a wrong one, when spares show
        which, is left out and noted in :attr:`wrong_shares` as ``(holder, owner, kind)``."""
        try:
            secret, wrong = shamir.combine_checked(list(held.values()), self.params.threshold)
        except ValueError as exc:
            raise self._fail(f"inconsistent shares of {owner}'s {kind}: {exc}") from exc
        if wrong is not None:
            holder = next(m for m, (x, _) in held.items() if x == wrong)
            self.wrong_shares.append((holder, owner, kind))
        return secret

    def finish(self) -> np.ndarray:
        """The unmasked sum of the survivors' encoded inputs (decode with ``FixedPoint.decode``)."""
        self._expect("unmask")
        assert self._request is not None
        self._need(len(self._answered), "answered the unmask stage")
        t = self.params.threshold
        short = [m for m in self._request.survivors if len(self._seed_shares.get(m, {})) < t]
        short += [m for m in self._request.dropped if len(self._key_shares.get(m, {})) < t]
        if short:
            raise self._fail(f"fewer than {t} shares came back for {', '.join(short)}")
        seeds = {m: self._combine(m, "seed", self._seed_shares[m]) for m in self._request.survivors}
        keys = {
            m: RoundKeyPair(self._combine(m, "key", self._key_shares[m]))
            for m in self._request.dropped
        }
        for member, pair in keys.items():
            if pair.public != self._ads[member].s_public:
                raise self._fail(
                    f"the shares of {member}'s mask key do not match its advertised key"
                )
        total = self._sum.copy()
        for seed in seeds.values():
            add_mask(total, seed, -1)
        for member, pair in keys.items():
            for peer in self._graph[member]:
                if peer in self._survivors:
                    seed = mask_seed(
                        pair.agree(self._ads[peer].s_public), self.context, member, peer
                    )
                    # ``peer`` added +PRG when member < peer, -PRG otherwise: undo it
                    add_mask(total, seed, -1 if member < peer else +1)
        try:
            self.params.encoding.check_sum(total, len(self._survivors))
        except ValueError as exc:
            raise self._fail(f"the recovered sum is impossible, a share was wrong: {exc}") from exc
        self.stage = "done"
        return total
