"""A coordinator URL that cannot be one is refused at once, not retried for a minute.

``localhost:8080`` (the scheme forgotten) used to be retried as if the
coordinator were down, for as long as the caller waits for an outage.
"""

from __future__ import annotations

import time

import pytest

from fedaas.client.transport import ApiClientError, Transport


@pytest.mark.parametrize(
    "url", ["localhost:8080", "127.0.0.1:8080", "not a url", "ftp://host", "http://", "http://[::1"]
)
def test_a_url_that_is_not_http_or_https_is_refused_at_once(url: str) -> None:
    began = time.monotonic()
    with pytest.raises(ApiClientError, match="http://HOST:PORT or https://HOST:PORT") as refused:
        Transport(url, "token", give_up_after=60)
    assert refused.value.code == "bad_url" and repr(url) in refused.value.detail
    assert time.monotonic() - began < 1


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "https://coordinator.example:8443/", "http://[::1]:9000"]
)
def test_http_and_https_urls_are_taken(url: str) -> None:
    transport = Transport(url, "token")
    assert transport.server == url.rstrip("/")
    transport.close()
