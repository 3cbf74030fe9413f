"""fsspec storage options: from ``--storage-option`` flags and the environment.

Options come from two places, explicit ones winning: each cloud's standard
environment variables (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` / ``AWS_ENDPOINT_URL[_S3]``; ``STORAGE_EMULATOR_HOST``
for a GCS emulator; ``AZURE_STORAGE_CONNECTION_STRING``) and
``--storage-option key=value`` flags (:func:`parse_storage_options`).
Libraries also read their own variables (``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_KEY``...).
Every credential value that passes through :func:`storage_options_for` is
remembered by :mod:`fedaas.storage.redaction`, so it never appears in a
message or (once log redaction is installed) a log line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fedaas.storage.redaction import remember_secrets
from fedaas.storage.urls import LOCAL, is_loopback, protocol_of


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_storage_options(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` (``--storage-option`` flags) into fsspec options.

    Values ``true``/``false``/``none`` and numbers are converted; everything
    else stays a string (split at the first ``=``, so base64 keys keep their
    padding). A dotted key (``client_kwargs.region_name=eu-west-1``) makes a
    nested mapping. Raises ``ValueError`` listing every malformed item,
    without echoing values.
    """
    options: dict[str, Any] = {}
    problems: list[str] = []
    for number, item in enumerate(items or (), start=1):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            shown = key if sep else "(value hidden)"
            problems.append(f"storage option #{number} ({shown}) is not key=value")
            continue
        parts = key.split(".")
        if any(not p.isidentifier() for p in parts):
            problems.append(f"storage option #{number}: {key!r} is not a valid option name")
            continue
        target = options
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"storage option {key!r} conflicts with {part!r}")
                break
            target = child
        else:
            if parts[-1] in target:
                problems.append(f"storage option {key!r} is given twice")
            target[parts[-1]] = _parse_value(value)
    if problems:
        raise ValueError("; ".join(problems))
    return options


def env_storage_options(protocol: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options for ``protocol`` taken from the cloud's standard environment variables."""
    env = os.environ if environ is None else environ
    opts: dict[str, Any] = {}
    if protocol == "s3":
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            opts["key"] = env["AWS_ACCESS_KEY_ID"]
            opts["secret"] = env["AWS_SECRET_ACCESS_KEY"]
            if env.get("AWS_SESSION_TOKEN"):
                opts["token"] = env["AWS_SESSION_TOKEN"]
    elif protocol == "gs":
        host = env.get("STORAGE_EMULATOR_HOST", "")
        if host and host != "default":
            opts["endpoint_url"] = host if "://" in host else f"http://{host}"
    elif protocol == "az":
        if env.get("AZURE_STORAGE_CONNECTION_STRING"):
            opts["connection_string"] = env["AZURE_STORAGE_CONNECTION_STRING"]
    return opts


def storage_options_for(
    url: str,
    storage_options: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Environment-derived options for ``url`` overlaid with explicit ones.

    Local paths get no options. For ``gs://`` against a loopback endpoint
    (an emulator) ``token="anon"`` is added unless a token is given, so that
    gcsfs never probes a cloud metadata server.
    """
    protocol = protocol_of(url)
    if protocol in LOCAL:
        return {}
    opts = {**env_storage_options(protocol, environ), **(storage_options or {})}
    if protocol == "gs" and "token" not in opts and is_loopback(str(opts.get("endpoint_url", ""))):
        opts["token"] = "anon"
    remember_secrets(opts)
    return opts
