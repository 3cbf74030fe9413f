"""The dashboard in a real headless Chromium (Playwright over Debian's chromium).

A real coordinator process and two member agents (threads, each upload held
back a little so rounds are slow enough to watch). In the browser the
operator signs in, submits a job with a mistake and sees the error next to
the key, fixes it, watches the accuracy curve grow round by round without a
reload, submits a job that cannot reach its quorum and reads the failure
reason, cancels a running job, and revokes a member. Screenshots of each
step are written to the folder printed at the start (``test-artifacts/
dashboard`` in the repository, or ``$FEDAAS_TEST_ARTIFACTS``).

Needs ``/usr/bin/chromium`` (``make test`` installs it with apt-get when it
is missing); skipped, saying so, where it is not installed. Never runs
``playwright install``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedaas.sim.cluster import LocalCluster
from fixtures.agents import RecordingTransport, agent_threads

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-quic",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[3]
FEATURES, CLASSES = 6, 3
UPLOAD_DELAY_S = 1.5  # each member's upload waits this long: about one round per 1.5 s

GOOD = """
[job]
name = "watched"
rounds = 4
seed = 3

[model]
name = "logreg"

[data]
features = 6
classes = 3

[train]
lr = {lr}
batch_size = 8

[federation]
clients_per_round = 2
min_clients = 2
round_timeout = 60

[evaluation]
validation_split = 0.25
"""
STARVED = """
[job]
name = "starved"
rounds = 2

[model]
name = "logreg"

[data]
features = 6
classes = 3

[federation]
min_clients = 3
round_timeout = 1

[evaluation]
validation_split = 0.25
"""
LONG = GOOD.replace('"watched"', '"long"').replace("rounds = 4", "rounds = 500")


class SlowUploads(RecordingTransport):
    """A member whose uploads take a while (a slow link): rounds last long enough to watch."""

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "PUT":
            time.sleep(UPLOAD_DELAY_S)
        return super().request(method, path, **kwargs)


@pytest.fixture
def shots() -> Path:
    folder = Path(os.environ.get("FEDAAS_TEST_ARTIFACTS", REPO / "test-artifacts")) / "dashboard"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\ndashboard screenshots: {folder}")
    return folder


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalCluster]:
    datasets = {}
    for i, name in enumerate(("ana", "bo")):
        rng = np.random.default_rng(i)
        x = rng.normal(size=(80, FEATURES)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        datasets[name] = str(tmp_path / f"{name}.npz")
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        with agent_threads(cluster, datasets, tmp_path / "members", transport=SlowUploads):
            cluster.wait_online(2, timeout=60)
            yield cluster


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is not installed (make test installs it: apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _submit(page: Any, source: str) -> None:
    page.goto(page.url.split("/ui/")[0] + "/ui/submit")
    page.fill("#source", source)
    page.click("#submit")


def test_operator_drives_a_federation_from_the_browser(
    federation: LocalCluster, browser: Any, shots: Path
) -> None:
    from playwright.sync_api import expect

    url = federation.url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.on("dialog", lambda dialog: dialog.accept())

    # sign in: pages are behind the admin token
    page.goto(f"{url}/ui/jobs")
    expect(page).to_have_url(f"{url}/ui/login")
    page.fill("#token", "fda_not-the-token")
    page.click("#login")
    expect(page.locator("#login-error")).to_be_visible()
    page.fill("#token", federation.admin_token)
    page.click("#login")
    expect(page).to_have_url(f"{url}/ui/jobs")
    page.screenshot(path=shots / "01-signed-in.png", full_page=True)

    # a mistake is shown next to the key it names; nothing is submitted
    _submit(page, GOOD.format(lr="-0.5"))
    error = page.locator(".field-error")
    expect(error).to_contain_text("train.lr")
    expect(page.locator(".line.bad")).to_contain_text("lr = -0.5")
    page.screenshot(path=shots / "02-field-error.png", full_page=True)
    assert federation.admin.jobs() == []

    # the fixed job runs; its accuracy curve grows round by round, without a reload
    _submit(page, GOOD.format(lr="0.2"))
    expect(page).to_have_url(re.compile(r".*/ui/jobs/job-[0-9a-f]+$"))
    watched = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__sameDocument = true")
    seen = []
    for points in ("1", "2", "3", "4"):
        expect(page.locator("#charts")).to_have_attribute("data-points", points, timeout=60_000)
        seen.append(int(page.locator('.chart[data-chart="accuracy"]').get_attribute("data-points")))
        page.screenshot(path=shots / f"03-round-{points}.png", full_page=True)
    assert seen == [1, 2, 3, 4]
    expect(page.locator("#status")).to_have_text("completed", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True  # updated live, never reloaded
    assert page.locator("#rounds tbody tr").count() == 4
    assert page.locator(".chart").count() >= 4  # accuracy, loss, duration, bytes
    final = federation.admin.job(watched)
    shown = page.locator("#rounds tbody tr").first.locator("td").nth(1).inner_text()
    assert shown == f"{final.rounds[-1].accuracy:.4f}"
    download = page.request.get(f"{url}/ui/jobs/{watched}/model")
    assert download.ok and len(download.body()) > 100
    folder = page.request.get(f"{url}/ui/jobs/{watched}/run.zip")
    assert folder.ok and folder.body()[:2] == b"PK"

    # a job that cannot reach its quorum: warned at submit, then its failure reason
    _submit(page, STARVED)
    expect(page.locator(".preflight").first).to_contain_text("min_clients is 3")
    expect(page.locator("#status")).to_have_text("failed", timeout=60_000)
    expect(page.locator("#reason")).to_contain_text("quorum not met")
    page.screenshot(path=shots / "04-failure-reason.png", full_page=True)

    # cancel a running job from its page
    _submit(page, LONG.format(lr="0.2"))
    expect(page.locator("#charts")).to_have_attribute("data-points", "1", timeout=60_000)
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#reason")).to_contain_text("cancelled by the operator")
    page.screenshot(path=shots / "05-cancelled.png", full_page=True)

    # the jobs list and the members page
    page.goto(f"{url}/ui/jobs")
    expect(page.locator("#jobs tbody tr")).to_have_count(3)
    expect(page.locator("#jobs")).to_contain_text("quorum not met")
    page.screenshot(path=shots / "06-jobs.png", full_page=True)
    federation.admin.enroll("mallory")  # enrolled, never connects: revoked below
    page.goto(f"{url}/ui/members")
    expect(page.locator('tr[data-member="ana"]')).to_contain_text("online")
    rounds = int(page.locator('tr[data-member="ana"] td').nth(3).inner_text())
    assert rounds >= 5  # 4 rounds of the watched job, at least 1 of the cancelled one
    page.locator('tr[data-member="mallory"] button').click()
    expect(page.locator('tr[data-member="mallory"]')).to_contain_text("revoked")
    page.screenshot(path=shots / "07-members.png", full_page=True)
    assert {m.name: m.revoked for m in federation.admin.members()}["mallory"] is True
