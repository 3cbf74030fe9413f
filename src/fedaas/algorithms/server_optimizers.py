"""Server optimizers: how the members' mean update becomes the next global model.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (arXiv:2003.00295):
with ``D_t`` the (weighted) mean of the members' deltas ``local - global``,

- ``fedavg``: ``x += eta * D_t`` (server SGD; McMahan et al. 2017 is ``eta = 1``);
- ``fedavgm``: ``m = b1*m + D_t``; ``x += eta * m`` (server momentum, Hsu et
  al. 2019, arXiv:1909.06335);
- ``fedadagrad`` / ``fedadam`` / ``fedyogi``: ``m = b1*m + (1-b1)*D_t`` and
  ``v = v + D_t^2`` (Adagrad), ``v = b2*v + (1-b2)*D_t^2`` (Adam) or
  ``v = v - (1-b2)*D_t^2*sign(v - D_t^2)`` (Yogi); then
  ``x += eta * m / (sqrt(v) + tau)``, without bias correction, as in the paper.

The state (``m``, ``v``, rounds taken) is what a coordinator must persist with
every round to resume a job exactly; :meth:`ServerOptimizer.state_dict` and
:meth:`ServerOptimizer.from_state` carry it. Pure numpy, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from fedaas.tensors import Manifest

Name = Literal["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"]
ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")


class ServerOptimizer:
    """One job's server optimizer; :meth:`step` turns ``D_t`` into the model's update in place."""

    def __init__(
        self,
        name: Name,
        manifest: Manifest,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if name not in ("fedavg", "fedavgm", *ADAPTIVE):
            raise ValueError(f"unknown server optimizer {name!r}")
        if lr <= 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or tau <= 0:
            raise ValueError("need lr > 0, 0 <= beta1 < 1, 0 <= beta2 < 1 and tau > 0")
        self.name, self.lr, self.beta1, self.beta2, self.tau = name, lr, beta1, beta2, tau
        self.manifest = dict(manifest)
        self.steps = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        if name != "fedavg":
            self.m = {k: np.zeros(shape, np.float32) for k, shape in manifest.items()}
        if name in ADAPTIVE:
            # Reddi et al. initialise v with tau^2 (their Algorithm 2, v_{-1} >= tau^2)
            self.v = {k: np.full(shape, tau * tau, np.float32) for k, shape in manifest.items()}

    @property
    def stateful(self) -> bool:
        return self.name != "fedavg"

    def step(self, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Replace ``delta`` (``D_t``, float32) by the update to add to the model; returns it."""
        if set(delta) != set(self.manifest):
            raise ValueError("the update's tensors do not match the model")
        b1, b2 = np.float32(self.beta1), np.float32(self.beta2)
        lr = np.float32(self.lr)
        for name, d in delta.items():
            if self.name == "fedavg":
                if self.lr != 1:
                    d *= lr
                continue
            m = self.m[name]
            if self.name == "fedavgm":
                m *= b1
                m += d
                np.multiply(m, lr, out=d)
                continue
            v = self.v[name]
            square = d * d
            if self.name == "fedadagrad":
                v += square
            elif self.name == "fedadam":
                v *= b2
                v += (1 - b2) * square
            else:  # fedyogi
                v -= (1 - b2) * square * np.sign(v - square)
            m *= b1
            m += (1 - b1) * d
            np.sqrt(v, out=d)
            d += np.float32(self.tau)
            np.divide(m, d, out=d)
            d *= lr
        self.steps += 1
        return delta

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"m/{k}": a for k, a in self.m.items()} | {f"v/{k}": a for k, a in self.v.items()}
        meta = {
            "name": self.name,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
            "steps": self.steps,
        }
        return arrays, meta

    @classmethod
    def from_state(
        cls, manifest: Manifest, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> ServerOptimizer:
        """Rebuild a saved optimizer, refusing state that does not fit ``manifest``."""
        try:
            opt = cls(
                meta["name"],
                manifest,
                float(meta["lr"]),
                float(meta["beta1"]),
                float(meta["beta2"]),
                float(meta["tau"]),
            )
            opt.steps = int(meta["steps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"server optimizer state is unreadable: {exc}") from None
        for prefix, target in (("m/", opt.m), ("v/", opt.v)):
            for name in target:
                saved = arrays.get(prefix + name)
                if saved is None or saved.shape != target[name].shape:
                    raise ValueError(
                        f"server optimizer state for {prefix}{name} is missing or misshapen"
                    )
                target[name] = np.asarray(saved, dtype=np.float32).copy()
        return opt
