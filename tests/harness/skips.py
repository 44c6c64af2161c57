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
