"""The rules every section of a job spec follows, in one place (:class:`Section`).

- unknown keys are errors: a misspelled key is never silently ignored;
- strict types: a value of the wrong type (``rounds = true``,
  ``batch_size = "32"``, ``hidden = [64.5]``) is an error, not coerced; ints
  still pass as floats;
- numbers are finite: NaN and infinity are refused, named as such;
- a parsed spec is immutable.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every spec section (``fedaas.spec`` and its ``spec_*`` modules)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
