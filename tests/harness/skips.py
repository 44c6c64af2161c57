"""Honest skips: a test that needs a tool skips locally with the reason, and fails under CI=true,
where the Makefile must have installed everything."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed ({why})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure: the Makefile must install it")
        pytest.skip(message)
    return path


def require_netns() -> None:
    """Skip (fail under CI=true) unless this machine can build network namespace hosts:
    root, iproute2 and util-linux, and the right to create namespaces and bridges."""
    from tests.harness.netns import netns_available
    reason = netns_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; under CI=true this is a failure: run the suite as root with iproute2")
        pytest.skip(reason)


#: Debian's own Chromium build (the Makefile installs the chromium package). Playwright's
#: downloaded browsers are never used: `playwright install` fetches from a CDN, not a registry.
CHROMIUM = "/usr/bin/chromium"


def require_browser() -> str:
    """The path of Debian's chromium, once both it and Playwright for Python are installed;
    skip (fail under CI=true) naming whichever is missing."""
    import importlib.util
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} not installed (Debian package chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright for Python not installed (the test extra: pip install -e '.[test]')")
    if missing:
        message = "; ".join(missing) + " (browser test of the dashboard)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure: the Makefile must install it")
        pytest.skip(message)
    return CHROMIUM
