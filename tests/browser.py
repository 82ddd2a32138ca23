"""Headless Chromium (Debian's ``chromium``) for tests that open the HTML report like a reader would."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--no-first-run", "--disable-extensions", "--mute-audio"]


def chromium() -> str:
    """Path of the browser; skips the test without it, unless CI demands it (SALT_EXP_REQUIRE_CHROMIUM=1)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("SALT_EXP_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required here (SALT_EXP_REQUIRE_CHROMIUM=1) but is not installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return exe


def dump_dom(page: Path | str, tmp: Path, budget_ms: int = 10000) -> str:
    """The DOM of a file or URL after its load event (scripts run, ``budget_ms`` of virtual time for their
    requests), as Chromium serialises it."""
    target = page if isinstance(page, str) else page.resolve().as_uri()
    out = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}",
                          f"--virtual-time-budget={budget_ms}", "--dump-dom", target],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def screenshot(page: Path | str, png: Path, tmp: Path, size: tuple[int, int] = (1300, 1800),
               budget_ms: int = 0) -> Path:
    target = page if isinstance(page, str) else page.resolve().as_uri()
    wait = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    out = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars",
                          f"--window-size={size[0]},{size[1]}", *wait, f"--screenshot={png}", target],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and png.exists(), out.stderr[-2000:]
    return png
