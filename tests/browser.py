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


def dump_dom(page: Path, tmp: Path) -> str:
    """The page's DOM after its load event (scripts run), as Chromium serialises it."""
    out = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def screenshot(page: Path, png: Path, tmp: Path, size: tuple[int, int] = (1300, 1800)) -> Path:
    out = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars",
                          f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and png.exists(), out.stderr[-2000:]
    return png
