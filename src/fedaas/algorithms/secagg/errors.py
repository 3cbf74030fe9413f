"""Named failures of secure aggregation, so callers can tell a refusal from a bug.

Every error is a :class:`ValueError` (bad input from a peer or the
coordinator) with a one-line message that says who and why.
"""

from __future__ import annotations


class SecAggError(ValueError):
    """Base of every secure-aggregation failure."""


class SignatureInvalid(SecAggError):
    """A round key advertisement is not signed by the member's registered identity key."""


class ProtocolViolation(SecAggError):
    """A message that the protocol does not allow at this stage (duplicate, wrong peer, wrong size)."""


class UnmaskRefused(SecAggError):
    """An honest member refuses an unmask request that could reveal one member's update."""


class MaskReuse(SecAggError):
    """A second masked upload under the same round keys (would reveal the difference of two inputs)."""


class ThresholdNotMet(SecAggError):
    """Too few members answered a stage: the round fails and releases nothing."""


class ShareDecryptionFailed(SecAggError):
    """An encrypted share does not authenticate (tampered, misrouted or under foreign keys)."""
