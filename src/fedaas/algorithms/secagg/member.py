"""A member's side of one secure round (SecAgg / SecAgg+), as a pure state machine.

Stages (Bonawitz et al., CCS 2017, figure 4; SecAgg+ neighbourhoods from
Bell et al., CCS 2020):

1. :meth:`SecAggMember.advertise`: two fresh X25519 public keys, signed.
2. :meth:`SecAggMember.share_keys`: verify every peer's signature, then
   Shamir-share the self-mask seed ``b_u`` and the mask secret key
   ``s_u^SK`` among its group and encrypt each neighbour's pair of shares
   to it (AES-256-GCM, authenticated with the round and both ids).
3. :meth:`SecAggMember.masked_input`:
   ``y_u = x_u + PRG(b_u) + sum_{v<u} PRG(s_uv) - sum_{v>u} PRG(s_uv)`` mod 2^k
   over the neighbours that shared keys. Once per object: a second vector
   under the same masks would reveal the difference of the two (:class:`MaskReuse`).
4. :meth:`SecAggMember.unmask`: for each neighbour, its ``b`` share if it
   survived, its ``s`` share if it dropped, never both: a request that
   asks for both kinds for one peer (now or across requests), lists this
   member as dropped, or names fewer than ``threshold`` survivors is
   refused (:class:`UnmaskRefused`) and reveals nothing.

Make one object per member per (job, round, attempt) and never persist it:
a rerun round then always has fresh keys and masks. Its secrets
(:class:`RoundSecrets`) may be drawn and advertised before the round's
parameters are known (a member advertises its next round's keys with its
masked upload), then handed to the object made for that round, which may
share them before the round begins and learn the round's encoding when it
does (:meth:`SecAggMember.bind`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedaas.algorithms.secagg import shamir
from fedaas.algorithms.secagg.errors import (
    MaskReuse,
    ProtocolViolation,
    SecAggError,
    SignatureInvalid,
    ThresholdNotMet,
    UnmaskRefused,
)
from fedaas.algorithms.secagg.graph import check_groups, neighbours
from fedaas.algorithms.secagg.keys import (
    IdentityKey,
    RoundKeyPair,
    mask_seed,
    open_sealed,
    seal,
    sign_advertisement,
    verify_advertisement,
)
from fedaas.algorithms.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    RoundContext,
    SecAggParams,
    UnmaskRequest,
    UnmaskResponse,
    check_member_id,
    framed,
)
from fedaas.algorithms.secagg.prg import add_mask


def share_points(ids: Iterable[str]) -> dict[str, int]:
    """Each member's Shamir point: 1 + its position among the sorted advertised ids."""
    return {m: i + 1 for i, m in enumerate(sorted(ids))}


def _unframe(plain: bytes) -> list[bytes]:
    parts, i = [], 0
    while i < len(plain):
        size = int.from_bytes(plain[i : i + 4], "big")
        parts.append(plain[i + 4 : i + 4 + size])
        i += 4 + size
    return parts


@dataclass(frozen=True)
class RoundSecrets:
    """A member's fresh secrets for one run of one round: key pairs ``c`` and ``s``, seed ``b_u``."""

    c: RoundKeyPair = field(default_factory=RoundKeyPair)
    s: RoundKeyPair = field(default_factory=RoundKeyPair)
    seed: bytes = field(default_factory=lambda: os.urandom(32), repr=False)

    def advertise(
        self, identity: IdentityKey, context: RoundContext, member_id: str
    ) -> KeyAdvertisement:
        """The public keys, signed for ``context`` (Ed25519 is deterministic: same bytes each time)."""
        return sign_advertisement(identity, context, member_id, self.c.public, self.s.public)


class SecAggMember:
    """One member in one secure round; see the module docstring for the stages."""

    def __init__(
        self,
        member_id: str,
        identity: IdentityKey,
        context: RoundContext,
        params: SecAggParams,
        secrets: RoundSecrets | None = None,
    ) -> None:
        self.member_id = check_member_id(member_id)
        self.context = context
        self.params = params
        self._identity = identity
        secrets = secrets or RoundSecrets()
        self._c, self._s, self._seed = secrets.c, secrets.s, secrets.seed  # b_u: self._seed
        self._agreed: dict[str, bytes] = {}  # peer -> c agreement (shares out, then in)
        self._ad: KeyAdvertisement | None = None
        self._ads: dict[str, KeyAdvertisement] = {}
        self._peers: tuple[str, ...] = ()
        self._own: tuple[bytes, bytes] | None = None  # own shares of (b_u, s_u^SK)
        self._held: dict[str, tuple[bytes, bytes]] = {}  # sender -> its shares for me
        self.unusable: dict[str, str] = {}
        """Peers whose shares for this member could not be used this round, and why."""
        self._masked: np.ndarray | None = None
        self._revealed: dict[str, str] = {}  # peer -> "seed" | "key"

    def advertise(self) -> KeyAdvertisement:
        """Stage 1: this round's two public keys, signed by the identity key."""
        if self._ad is None:
            secrets = RoundSecrets(self._c, self._s, self._seed)
            self._ad = secrets.advertise(self._identity, self.context, self.member_id)
        return self._ad

    def share_keys(
        self, advertisements: Sequence[KeyAdvertisement], identities: Mapping[str, bytes]
    ) -> list[EncryptedShare]:
        """Stage 2: check every advertisement, then one encrypted pair of shares per neighbour."""
        if self._ad is None:
            raise ProtocolViolation("share_keys before advertise")
        if self._ads:
            raise ProtocolViolation("share_keys was already answered for this round")
        ads: dict[str, KeyAdvertisement] = {}
        for ad in advertisements:
            check_member_id(ad.member_id)
            if ad.member_id in ads:
                raise ProtocolViolation(f"{ad.member_id} advertised twice")
            if ad.member_id == self.member_id:  # its own: the very bytes it signed, or refused
                if ad != self._ad:
                    raise ProtocolViolation(
                        f"the advertised keys of {self.member_id} are not its own"
                    )
            elif ad.member_id not in identities:
                raise SignatureInvalid(f"{ad.member_id} has no registered identity key")
            else:
                verify_advertisement(ad, identities[ad.member_id], self.context, points=False)
            ads[ad.member_id] = ad
        if self.member_id not in ads:
            raise ProtocolViolation(f"the advertised keys of {self.member_id} are not its own")
        publics = [a.c_public for a in ads.values()] + [a.s_public for a in ads.values()]
        if len(set(publics)) != len(publics):
            raise ProtocolViolation("two advertisements carry the same public key")
        if len(ads) < self.params.threshold:
            raise ThresholdNotMet(
                f"{len(ads)} members advertised keys, {self.params.threshold} needed"
            )
        graph = neighbours(ads, self.params.neighbors, self.context)
        check_groups(graph, self.params.threshold)
        self._ads, self._peers = ads, graph[self.member_id]
        group = sorted((*self._peers, self.member_id))
        at = share_points(ads)
        points = [at[m] for m in group]
        seed_shares = shamir.split(self._seed, self.params.threshold, points)
        key_shares = shamir.split(self._s.private, self.params.threshold, points)
        out = []
        for member, b_share, s_share in zip(group, seed_shares, key_shares, strict=True):
            pair = (shamir.share_to_bytes(b_share), shamir.share_to_bytes(s_share))
            if member == self.member_id:
                self._own = pair
                continue
            plain = framed(self.member_id, member, *pair)
            agreement = self._agreed[member] = self._c.agree(ads[member].c_public)
            sealed = seal(agreement, self.context, self.member_id, member, plain)
            out.append(EncryptedShare(self.member_id, member, sealed))
        return out

    def _open(self, share: EncryptedShare, me: int) -> tuple[bytes, bytes]:
        """The seed and key shares one peer sent this member; :class:`SecAggError` if unusable."""
        agreement = self._agreed.get(share.sender) or self._c.agree(
            self._ads[share.sender].c_public
        )
        plain = open_sealed(agreement, self.context, share.sender, self.member_id, share.ciphertext)
        parts = _unframe(plain)
        if len(parts) != 4 or framed(*parts) != plain:
            raise ProtocolViolation(f"malformed shares from {share.sender}")
        if parts[0] != share.sender.encode() or parts[1] != self.member_id.encode():
            raise ProtocolViolation(f"shares from {share.sender} name other members")
        try:
            points = [shamir.share_from_bytes(p)[0] for p in parts[2:]]
        except ValueError as exc:
            raise ProtocolViolation(f"shares from {share.sender}: {exc}") from exc
        if points != [me, me]:
            raise ProtocolViolation(
                f"shares from {share.sender} are not at {self.member_id}'s point"
            )
        return parts[2], parts[3]

    def masked_input(self, shares: Sequence[EncryptedShare], encoded: np.ndarray) -> np.ndarray:
        """Stage 3: ``encoded`` (from :meth:`FixedPoint.encode`) under this round's masks.

        A peer's share that does not decrypt or is malformed is set aside (in
        :attr:`unusable`, with why): the pairwise mask with that peer is added all the same
        (it comes from the advertised keys), and only that peer's own secrets lose one
        share. If too few are left to rebuild them, the round fails naming that peer; one
        member's bad shares no longer make every honest member refuse the round.
        """
        if self._masked is not None:
            raise MaskReuse(
                f"{self.member_id} already sent a masked input under these round keys; "
                "a rerun needs a new attempt with fresh keys"
            )
        if self._own is None:
            raise ProtocolViolation("masked_input before share_keys")
        dtype = self.params.encoding.dtype
        if not isinstance(encoded, np.ndarray) or encoded.dtype != dtype or encoded.ndim != 1:
            raise ValueError(f"the encoded input is a 1-D {dtype} vector")
        me = share_points(self._ads)[self.member_id]
        routed: list[str] = []
        held: dict[str, tuple[bytes, bytes]] = {}
        self.unusable.clear()
        for share in shares:
            if share.recipient != self.member_id or share.sender not in self._peers:
                raise ProtocolViolation(
                    f"a share from {share.sender} to {share.recipient} is not for {self.member_id}"
                )
            if share.sender in routed:
                raise ProtocolViolation(f"two shares from {share.sender}")
            routed.append(share.sender)
            try:
                held[share.sender] = self._open(share, me)
            except SecAggError as exc:  # the sender's fault: its secrets lose this share only
                self.unusable[share.sender] = str(exc)
        if len(routed) + 1 < self.params.threshold:
            raise ThresholdNotMet(
                f"{self.member_id} got shares from {len(routed)} neighbours; its group needs "
                f"{self.params.threshold} members to be recoverable"
            )
        y = encoded.copy()
        add_mask(y, self._seed, +1)
        for peer in sorted(routed):  # every peer that shared masks with us, usable share or not
            seed = mask_seed(
                self._s.agree(self._ads[peer].s_public), self.context, self.member_id, peer
            )
            add_mask(y, seed, +1 if peer < self.member_id else -1)
        self._held = held
        y.flags.writeable = False
        self._masked = y
        return y

    def bind(self, params: SecAggParams) -> None:
        """The round's parameters, once its task came, for shares made ahead of it: the
        threshold and neighbours must be those the shares were made with (only the encoding,
        which stage 3 uses, may be new)."""
        if (params.threshold, params.neighbors) != (self.params.threshold, self.params.neighbors):
            raise ProtocolViolation(
                "the round's threshold or neighbours are not those its shares were made for"
            )
        if self._masked is not None:
            raise MaskReuse(f"{self.member_id} already sent a masked input under these keys")
        self.params = params

    @property
    def masked_upload(self) -> np.ndarray | None:
        """The masked input already computed (for retrying the same upload), or ``None``."""
        return self._masked

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 4: survivors' seed shares and dropped members' key shares, or a refusal."""
        if self._masked is None:
            raise UnmaskRefused(f"{self.member_id} has sent no masked input this round")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if both := sorted(survivors & dropped):
            raise UnmaskRefused(f"asked for both shares of {both[0]}: that would unmask its input")
        if self.member_id in dropped or self.member_id not in survivors:
            raise UnmaskRefused(
                f"{self.member_id} sent its masked input but is not listed as a survivor"
            )
        known = len(survivors & self._ads.keys())  # unknown ids can't pad the count
        if known < self.params.threshold:
            raise UnmaskRefused(
                f"{known} survivors, fewer than the threshold {self.params.threshold}: "
                "their sum could reveal one member's input"
            )
        wanted = {p: "seed" for p in survivors if p in self._held or p == self.member_id}
        wanted |= {p: "key" for p in dropped if p in self._held}
        for peer, kind in wanted.items():
            if self._revealed.get(peer, kind) != kind:
                raise UnmaskRefused(f"the other share of {peer} was already revealed")
        self._revealed.update(wanted)
        assert self._own is not None
        held = {**self._held, self.member_id: self._own}
        seeds = tuple((p, held[p][0]) for p in sorted(wanted) if wanted[p] == "seed")
        keys = tuple((p, held[p][1]) for p in sorted(wanted) if wanted[p] == "key")
        return UnmaskResponse(self.member_id, seeds, keys)
