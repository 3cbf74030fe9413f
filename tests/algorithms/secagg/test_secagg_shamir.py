"""Shamir secret sharing: any t shares reconstruct, t - 1 reveal nothing checkable."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedaas.algorithms.secagg import shamir

secrets_32 = st.binary(min_size=32, max_size=32)


@st.composite
def sharing(draw: st.DrawFn) -> tuple[bytes, int, list[shamir.Share], list[int]]:
    n = draw(st.integers(min_value=1, max_value=12))
    t = draw(st.integers(min_value=1, max_value=n))
    xs = draw(st.lists(st.integers(1, 65_535), min_size=n, max_size=n, unique=True))
    secret = draw(secrets_32)
    chosen = draw(st.permutations(range(n)))[:t]
    return secret, t, shamir.split(secret, t, xs), list(chosen)


@settings(max_examples=80, deadline=None)
@given(sharing())
def test_any_threshold_shares_reconstruct(case: tuple) -> None:
    secret, t, shares, chosen = case
    assert shamir.combine([shares[i] for i in chosen], t) == secret
    wire = [shamir.share_from_bytes(shamir.share_to_bytes(shares[i])) for i in chosen]
    assert shamir.combine(wire, t) == secret


def _interpolate_at(points: list[shamir.Share], x: int) -> int:
    p, total = shamir.PRIME, 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num, den = num * (x - xj) % p, den * (xi - xj) % p
        total = (total + yi * num * pow(den, -1, p)) % p
    return total


@settings(max_examples=60, deadline=None)
@given(sharing(), secrets_32)
def test_fewer_than_threshold_shares_fit_every_secret(case: tuple, other: bytes) -> None:
    """Any t - 1 shares plus ANY candidate secret define a valid degree t - 1 polynomial.

    So the t - 1 shares are consistent with every secret: they rule none out.
    Checked constructively: the polynomial through (0, other) and the t - 1
    shares reproduces those shares and a full set of t shares of ``other``.
    """
    secret, t, shares, chosen = case
    if t < 2:
        return
    known = [shares[i] for i in chosen[: t - 1]]
    points = [(0, int.from_bytes(other, "big")), *known]
    used = {x for x, _ in known}
    fx = next(x for x in range(65_535, 0, -1) if x not in used)
    forged_share = (fx, _interpolate_at(points, fx))
    assert shamir.combine([*known, forged_share], t) == other
    assert shamir.combine([shares[i] for i in chosen], t) == secret


def test_shares_are_fresh_randomness() -> None:
    a = shamir.split(bytes(32), 3, [1, 2, 3])
    b = shamir.split(bytes(32), 3, [1, 2, 3])
    assert a != b  # coefficients come from the CSPRNG, not from the secret


@pytest.mark.parametrize(
    ("secret", "t", "xs"),
    [
        (bytes(31), 2, [1, 2]),
        (bytes(32), 3, [1, 2]),
        (bytes(32), 0, [1]),
        (bytes(32), 2, [1, 1]),
        (bytes(32), 1, [0]),
    ],
)
def test_bad_input_is_refused(secret: bytes, t: int, xs: list[int]) -> None:
    with pytest.raises(ValueError):
        shamir.split(secret, t, xs)


def test_too_few_or_malformed_shares_are_refused() -> None:
    shares = shamir.split(b"\x07" * 32, 3, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="3 needed"):
        shamir.combine(shares[:2], 3)
    with pytest.raises(ValueError):
        shamir.share_from_bytes(b"\x00" * 34)
    with pytest.raises(ValueError, match="outside the field"):
        shamir.share_from_bytes(b"\x00\x01" + b"\xff" * 33)
    with pytest.raises(ValueError, match="distinct"):
        shamir.combine([shares[0], shares[0], shares[1]], 3)


@settings(max_examples=60, deadline=None)
@given(sharing(), st.data())
def test_one_wrong_share_with_two_spares_is_found_and_left_out(
    case: tuple, data: st.DataObject
) -> None:
    """Property: of ``threshold + 2`` shares or more, any single one with a wrong value is
    named and the secret comes out right (one ranked past the spare is never used, so never
    named); honest shares are never accused."""
    secret, t, shares, _ = case
    assume(len(shares) >= t + 2)
    assert shamir.combine_checked(shares, t) == (secret, None)
    bad = data.draw(st.integers(0, len(shares) - 1))
    x, y = shares[bad]
    lie = (x, (y + data.draw(st.integers(1, shamir.PRIME - 1))) % shamir.PRIME)
    forged = shares[:bad] + [lie] + shares[bad + 1 :]
    rank = sorted(s[0] for s in shares).index(x)  # the lowest t are used, the next one checks
    assert shamir.combine_checked(forged, t) == (secret, x if rank <= t else None)


def test_a_disagreement_that_cannot_be_pinned_on_one_share_is_refused() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5, 6])
    lie = lambda s: (s[0], (s[1] + 1) % shamir.PRIME)  # noqa: E731
    with pytest.raises(ValueError, match="too few came back"):  # one spare: detect, not fix
        shamir.combine_checked([lie(shares[0]), *shares[1:4]], 3)
    with pytest.raises(ValueError, match="more than one of them is wrong"):
        shamir.combine_checked([lie(shares[0]), lie(shares[1]), *shares[2:]], 3)
    assert shamir.combine_checked(shares[:3], 3) == (secret, None)  # nothing to check against


def test_a_wrong_share_that_interpolates_past_32_bytes_is_still_found() -> None:
    """Found by the property above: a wrong share among the lowest can interpolate to a value
    in [2^256, p), which ``combine`` refuses; the spares are checked first, so it is left out."""
    top = b"\xff" * 32
    shares = shamir.split(top, 1, [1, 2, 3])
    lie = (1, (shares[0][1] + 1) % shamir.PRIME)  # 2^256: in the field, past 32 bytes
    with pytest.raises(ValueError, match="32-byte secret"):
        shamir.combine([lie], 1)
    assert shamir.combine_checked([lie, *shares[1:]], 1) == (top, 1)
