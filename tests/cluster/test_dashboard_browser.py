"""The admin dashboard in a real headless Chromium (issue 8), against a real cluster of
3 MDS and 3 chunkserver processes.

Goal: an operator with nothing but a browser sees the cluster healthy, watches a chunkserver
die and come back (the page turns DEGRADED and then HEALTHY again, with the events in its
log) without reloading, drains a chunkserver and sets a replication policy from the page,
and can do all of it on a phone-width screen.

Method: Playwright for Python drives Debian's chromium (never a browser Playwright downloads).
Every check waits on the page's DOM (Playwright's ``expect`` with a timeout), never on a
sleep; not with ``page.wait_for_function`` either, which evaluates a string in the page and
so is refused by the CSP (no 'unsafe-eval'), as it should be. "Without a reload" is proved twice: ``window.__loadedAt``, set once when app.js
runs, is unchanged at the end, and the page fired exactly one ``load`` event. The page must
also run under the server's Content-Security-Policy with no violation and no uncaught
script error. Screenshots (desktop healthy, degraded, phone, and the page at a failure) go to
``$VSTORE_ARTIFACTS/dashboard`` or else to the test's tmp_path; their paths are printed.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster, write_files
from tests.harness.procs import vstore
from tests.harness.skips import require_browser
from tests.harness.wait import wait_for

pytestmark = pytest.mark.timeout(300)

# Offline after 1 s of silence and failed after 4 s, so the page turns quickly. Only a failed
# server's chunks count as below their target (an offline one may be back any moment), and
# with three chunkservers and the default 3:2 policy there is nowhere to rebuild them to: the
# chunks stay degraded until the server is back and reports them again.
TIMERS = {"cs_offline_after_s": 1, "cs_failed_after_s": 4}
# The first look may catch the leader in safe mode (waiting for every chunkserver's report).
HEALTHY_TIMEOUT_MS = 60_000
TURN_TIMEOUT_MS = 30_000
BACK_TIMEOUT_MS = 90_000
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 800}


def artifacts_dir(tmp_path: Path) -> Path:
    root = os.environ.get("VSTORE_ARTIFACTS")
    path = (Path(root) if root else tmp_path) / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path


async def test_dashboard_follows_a_chunkserver_loss_and_drives_drain_and_policy_in_a_browser(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    chromium = require_browser()
    from playwright.async_api import async_playwright, expect

    shots = artifacts_dir(tmp_path)
    cluster = FsCluster(tmp_path, chunk_bytes=1 << 20, mds_extra=TIMERS, admin=True)
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("dashboard-writer")
        leader = await cluster.leader()
        url = cluster.admin_url(leader)

        async with async_playwright() as pw:
            # as root Chromium refuses to start with its sandbox on
            browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            context = await browser.new_context(viewport=DESKTOP)
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"uncaught script error: {exc}"))
            page.on("console", lambda msg: problems.append(f"console: {msg.text}")
                    if "Content Security Policy" in msg.text else None)
            loads: list[str] = []
            page.on("load", lambda p: loads.append(p.url))

            async def shot(name: str, *, full_page: bool = True) -> Path:
                path = shots / f"{name}.png"
                await page.screenshot(path=str(path), full_page=full_page)
                print(f"screenshot: {path}")
                return path

            try:
                await page.goto(url)
                # ---- log in: a wrong password first ------------------------------------------------
                await expect(page.locator("#login-form")).to_be_visible(timeout=15_000)
                await page.fill("#password", "not-the-password")
                await page.click("#login-form button[type=submit]")
                await expect(page.locator("#login-error")).to_contain_text("Wrong password", timeout=10_000)
                await expect(page.locator("#dashboard")).to_be_hidden()
                await page.fill("#password", cluster.admin_password)
                await page.click("#login-form button[type=submit]")
                await expect(page.locator("#login-form")).to_be_hidden(timeout=10_000)

                # ---- healthy: 3 MDS, 3 chunkservers online ------------------------------------------
                health = page.locator("#health-state")
                await expect(health).to_have_text("HEALTHY", timeout=HEALTHY_TIMEOUT_MS)
                await expect(page.locator("#mds-table tbody tr")).to_have_count(3, timeout=10_000)
                await expect(page.locator("#mds-table tbody td.role", has_text="leader")).to_have_count(
                    1, timeout=10_000)
                statuses = page.locator("#cs-table tbody tr td.status")
                await expect(statuses).to_have_text(["online"] * 3, timeout=10_000)
                loaded_at = await page.evaluate("window.__loadedAt")
                assert isinstance(loaded_at, (int, float)) and loaded_at > 0

                await write_files(config, {f"/dash/blob-{n}.img": os.urandom(3 << 20) for n in range(2)})
                await expect(page.locator('#chunk-health dd[data-count="total"]')).to_have_text(
                    re.compile(r"^[1-9][0-9,]*$"), timeout=TURN_TIMEOUT_MS)
                await expect(health).to_have_text("HEALTHY", timeout=HEALTHY_TIMEOUT_MS)
                # the charts draw from /history and every /cluster answer: a line after a few polls
                await expect(page.locator("#chart-throughput svg polyline").first).to_be_attached(timeout=15_000)
                await expect(page.locator("#chart-space svg polyline").first).to_be_attached(timeout=15_000)
                await shot("desktop-healthy")

                # ---- a chunkserver dies: DEGRADED, the server offline, the event in the log ---------
                victim = cluster.cs_names[0]
                victim_id = int((cluster.root / victim / "cs-id").read_text())
                row = page.locator(f'#cs-table tr[data-cs-id="{victim_id}"]')
                cluster.kill(victim)
                await expect(health).to_have_text("DEGRADED", timeout=TURN_TIMEOUT_MS)
                await expect(row.locator("td.status")).to_have_text(re.compile(r"^(offline|failed)$"),
                                                                    timeout=TURN_TIMEOUT_MS)
                await expect(page.locator("#health-reasons")).to_contain_text("not online", timeout=TURN_TIMEOUT_MS)
                await expect(page.locator('#events li[data-event="cs.offline"]').first).to_be_visible(
                    timeout=TURN_TIMEOUT_MS)
                await expect(page.locator('#chunk-health > .nonzero[data-kind="degraded"], '
                                          '#chunk-health > .nonzero[data-kind="urgent"]').first).to_be_attached(
                    timeout=TURN_TIMEOUT_MS)
                await shot("desktop-degraded")

                # ---- it comes back: HEALTHY again, on the same page ---------------------------------
                cluster.start_cs(victim)
                await expect(row.locator("td.status")).to_have_text("online", timeout=BACK_TIMEOUT_MS)
                await expect(health).to_have_text("HEALTHY", timeout=BACK_TIMEOUT_MS)
                await expect(page.locator('#events li[data-event="cs.back"]').first).to_be_visible(
                    timeout=TURN_TIMEOUT_MS)
                assert await page.evaluate("window.__loadedAt") == loaded_at, "the page was reloaded"
                assert len(loads) == 1, f"the page loaded more than once: {loads}"
                await shot("desktop-recovered")

                # ---- drain a chunkserver from its row (after the confirm dialog) ---------------------
                drained = cluster.cs_names[1]
                drained_id = int((cluster.root / drained / "cs-id").read_text())
                dialogs: list[str] = []

                async def accept(dialog) -> None:  # type: ignore[no-untyped-def]
                    dialogs.append(dialog.message)
                    await dialog.accept()
                page.once("dialog", accept)
                await page.click(f'button.drain[data-cs-id="{drained_id}"]')
                drained_row = page.locator(f'#cs-table tr[data-cs-id="{drained_id}"]')
                await expect(drained_row.locator("td.state")).to_have_text("draining", timeout=TURN_TIMEOUT_MS)
                await expect(page.locator("#action-result")).to_contain_text("draining", timeout=10_000)
                await expect(drained_row.locator(f'button.activate[data-cs-id="{drained_id}"]')).to_be_visible(
                    timeout=10_000)
                assert len(dialogs) == 1 and str(drained_id) in dialogs[0], dialogs

                # ---- the replication policy of / : read it, set it, and the cluster has it ----------
                await page.fill("#policy-path", "/")
                await page.click("#policy-lookup")
                await expect(page.locator("#policy-current")).to_contain_text("/: replicas 3:2", timeout=10_000)
                await page.fill("#policy-replicas", "2:1")
                await page.click("#policy-submit")
                await expect(page.locator("#policy-result")).to_contain_text("Set. /: replicas 2:1", timeout=10_000)
                got = vstore("get-attr", "-c", str(config), "/")
                assert got.returncode == 0 and "replicas=2:1" in got.stdout, got.stdout + got.stderr

                # ---- phone width: no sideways page scroll, the health banner in view ------------------
                await page.set_viewport_size(PHONE)
                await page.evaluate("window.scrollTo(0, 0)")
                await expect(page.locator("#health")).to_be_in_viewport(timeout=10_000)
                await expect(page.locator(f'#cs-table tr[data-cs-id="{drained_id}"] td.state')).to_be_visible()
                # the charts are drawn again for the narrow screen (not just shrunk)
                chart = page.locator("#chart-throughput svg")
                await wait_for(lambda: chart.evaluate(f"svg => svg.width.baseVal.value <= {PHONE['width']}"),
                               timeout_s=10, interval_s=0.2, what="the throughput chart redrawn at phone width")
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"
                await shot("phone-top", full_page=False)  # what a phone shows first
                await shot("phone")
                assert await page.evaluate("window.__loadedAt") == loaded_at, "the page was reloaded"
                assert not problems, problems
            except BaseException:
                with contextlib.suppress(Exception):  # the page may be gone; the first error matters
                    await shot("at-failure")
                raise
            finally:
                await browser.close()
