"""Tools the end-to-end tests drive from outside Python (nginx, openssl, curl, newman).

When one is missing the test is skipped with the reason, unless ANALYTICS_TEST_E2E=required
(CI sets it, after installing them), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest

E2E_REQUIRED = os.environ.get("ANALYTICS_TEST_E2E", "").lower() == "required"


def require_tool(name: str, path: str | None = None, install: str = "") -> str:
    """The path of the program ``name`` (found on PATH, or at ``path``), or a skip."""
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    found = (
        path
        if path and os.access(path, os.X_OK)
        else (None if path else shutil.which(name, path=search))
    )
    if found:
        return found
    message = f"{name} is not installed" + (f" ({install})" if install else "")
    if E2E_REQUIRED:
        pytest.fail(message + " and ANALYTICS_TEST_E2E=required", pytrace=False)
    pytest.skip(message)
