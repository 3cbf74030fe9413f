"""Secure aggregation (SecAgg, Bonawitz et al. CCS 2017; SecAgg+, Bell et al. CCS 2020).

The pure cryptographic and protocol core, no I/O: the coordinator's
:class:`SecAggServer` and each member's :class:`SecAggMember` exchange the
plain values of :mod:`.messages`; :class:`FixedPoint` turns a clipped,
weighted update into integers modulo 2^32 (or 2^64) and back. One concept
per module: ``keys`` (identity signatures, X25519, HKDF, AEAD), ``prg``
(AES-CTR masks), ``shamir`` (secret sharing), ``encoding``, ``graph``
(SecAgg+ neighbourhoods), ``member``, ``server``, ``dp`` (distributed noise).
"""

from __future__ import annotations

from fedaas.algorithms.secagg.dp import distributed_noise_std, noised_std_without
from fedaas.algorithms.secagg.encoding import FixedPoint
from fedaas.algorithms.secagg.errors import (
    MaskReuse,
    ProtocolViolation,
    SecAggError,
    ShareDecryptionFailed,
    SignatureInvalid,
    ThresholdNotMet,
    UnmaskRefused,
)
from fedaas.algorithms.secagg.graph import check_groups, neighbours
from fedaas.algorithms.secagg.keys import IdentityKey, fingerprint, verify_advertisement
from fedaas.algorithms.secagg.member import SecAggMember
from fedaas.algorithms.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    RoundContext,
    SecAggParams,
    UnmaskRequest,
    UnmaskResponse,
)
from fedaas.algorithms.secagg.server import SecAggServer

__all__ = [
    "EncryptedShare",
    "FixedPoint",
    "IdentityKey",
    "KeyAdvertisement",
    "MaskReuse",
    "ProtocolViolation",
    "RoundContext",
    "SecAggError",
    "SecAggMember",
    "SecAggParams",
    "SecAggServer",
    "ShareDecryptionFailed",
    "SignatureInvalid",
    "ThresholdNotMet",
    "UnmaskRefused",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_groups",
    "distributed_noise_std",
    "fingerprint",
    "neighbours",
    "noised_std_without",
    "verify_advertisement",
]
