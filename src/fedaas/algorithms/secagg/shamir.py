"""t-out-of-n Shamir secret sharing of 32-byte secrets (Shamir, CACM 1979).

Over the prime field of p = 2^256 + 297 (the smallest prime above 2^256),
so a 32-byte secret is one field element, a share is 35 bytes, and the
arithmetic is Python's big integers.
A share is ``(x, y)`` with ``x`` in 1..65535 (the holder's index) and
``y = f(x)`` for a random polynomial ``f`` of degree ``t - 1`` with
``f(0) = secret``; the coefficients come from :mod:`secrets` (the OS
CSPRNG). Any ``t`` shares give ``f(0)`` by Lagrange interpolation; any
``t - 1`` are consistent with every secret (the property tests check both).

Wire form (:func:`share_to_bytes`): 2 bytes of ``x`` then 33 bytes of ``y``,
big-endian (35 bytes). ``t`` shares alone cannot reveal a wrong one (any
``t`` values interpolate to *some* secret); :func:`combine_checked` checks
them against a spare and leaves one wrong share out when two spares came
back. The coordinator also checks each reconstructed mask key against its
signed public key, and the recovered sum against what the members can add
up to (``FixedPoint.check_sum``). No well-kept Python package for this was installed,
hence this small module, property-tested in ``tests/algorithms/secagg``.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

PRIME = (1 << 256) + 297
"""The field: the smallest prime above 2^256, so every 32-byte secret is an element."""
SECRET_BYTES = 32
_Y_BYTES = 33
SHARE_BYTES = 2 + _Y_BYTES
MAX_SHARES = 65_535

Share = tuple[int, int]


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Shares of ``secret`` for the holders at ``xs``; any ``threshold`` of them reconstruct it."""
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        raise ValueError(f"a shared secret is {SECRET_BYTES} bytes")
    if len(set(xs)) != len(xs) or any(not 1 <= x <= MAX_SHARES for x in xs):
        raise ValueError(f"share points are distinct integers in 1..{MAX_SHARES}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in 1..{len(xs)} (the number of shares)")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


@functools.lru_cache(maxsize=512)
def _lagrange_at(xs: tuple[int, ...], at: int = 0) -> tuple[int, ...]:
    """Lagrange coefficients at ``at`` for the points ``xs`` (cached: a round reuses one set)."""
    coefficients = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * (xj - at) % PRIME
                denominator = denominator * (xj - xi) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def _on_curve(points: Sequence[Share], share: Share) -> bool:
    """Whether ``share`` lies on the polynomial through ``points`` (one per degree of freedom)."""
    xs = tuple(x for x, _ in points)
    value = sum(y * c for (_, y), c in zip(points, _lagrange_at(xs, share[0]), strict=True))
    return value % PRIME == share[1]


def _check_points(points: Sequence[Share]) -> None:
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs) or any(not 1 <= x <= MAX_SHARES for x in xs):
        raise ValueError("shares must have distinct points in 1..65535")
    if any(not 0 <= y < PRIME for _, y in points):
        raise ValueError("a share value is outside the field")


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares with distinct ``x`` (uses the ``threshold`` lowest)."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares)[:threshold]
    _check_points(points)
    xs = tuple(x for x, _ in points)
    secret = sum(y * c for (_, y), c in zip(points, _lagrange_at(xs), strict=True)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ValueError("the shares do not interpolate to a 32-byte secret (inconsistent)")
    return secret.to_bytes(SECRET_BYTES, "big")


MAX_CORRECTED = 64
"""Above this threshold a disagreement is reported, not searched (t + 1 interpolations)."""


def combine_checked(shares: Sequence[Share], threshold: int) -> tuple[bytes, int | None]:
    """The secret, checked against a spare share, and the point of a wrong share left out.

    With ``threshold + 1`` shares or more, the polynomial through the ``threshold`` lowest
    must also pass through the next one. If it does not, one share is wrong; with one more
    spare, the one whose removal makes the rest agree is found and left out (one wrong
    share corrected: what one dishonest holder can do to one secret). Raises
    :class:`ValueError` when the shares disagree and no single wrong one explains it, or
    too few came back to tell which one it is. With exactly ``threshold`` shares nothing
    can be checked (:func:`combine`).
    """
    points = sorted(shares)
    if len(points) <= threshold:
        return combine(points, threshold), None
    _check_points(points)
    used, spare = points[:threshold], points[threshold]
    if _on_curve(used, spare):  # before combine: a wrong share may interpolate past 2^256
        return combine(used, threshold), None
    if len(points) < threshold + 2 or threshold > MAX_CORRECTED:
        raise ValueError("the shares disagree, and too few came back to tell which is wrong")
    suspects = points[: threshold + 1]
    fits = [
        i
        for i in range(len(suspects))
        if _on_curve(suspects[:i] + suspects[i + 1 :], points[threshold + 1])
    ]
    if len(fits) != 1:
        raise ValueError("the shares disagree: more than one of them is wrong")
    wrong = fits[0]
    return combine(suspects[:wrong] + suspects[wrong + 1 :], threshold), suspects[wrong][0]


def share_to_bytes(share: Share) -> bytes:
    """35 bytes: ``x`` (2, big-endian) then ``y`` (33, big-endian)."""
    x, y = share
    if not 1 <= x <= MAX_SHARES or not 0 <= y < PRIME:
        raise ValueError("not a share of this field")
    return x.to_bytes(2, "big") + y.to_bytes(_Y_BYTES, "big")


def share_from_bytes(raw: bytes) -> Share:
    """Inverse of :func:`share_to_bytes`; refuses a wrong length or a value outside the field."""
    if not isinstance(raw, bytes | bytearray) or len(raw) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes")
    x, y = int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")
    if not 1 <= x <= MAX_SHARES or y >= PRIME:
        raise ValueError("a share point or value is outside the field")
    return x, y
