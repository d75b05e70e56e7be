"""Headless Chromium (Debian's ``chromium``) driven through its own command line.

``render`` loads a page, lets its scripts run for ``budget_ms`` of virtual time, and returns the
DOM after they ran and the console messages the page logged (``--enable-logging=stderr``
prints each as an ``INFO:CONSOLE`` line); ``screenshot`` writes a PNG of the page.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\] (.*)$", re.M)


def chromium() -> str:
    """The browser binary; a missing one skips the test here and fails it in CI."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def _args(url: str, width: int, height: int, budget_ms: int) -> list[str]:
    return [
        chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--proxy-server=http://127.0.0.1:9",  # offline: any fetch fails (and is logged)
        "--enable-logging=stderr",
        "--v=0",
        f"--window-size={width},{height}",
        f"--virtual-time-budget={budget_ms}",
        url,
    ]


@dataclass(frozen=True, slots=True)
class Rendered:
    dom: str
    console: list[str]


def render(page: Path, fragment: str = "", budget_ms: int = 15_000) -> Rendered:
    url = page.resolve().as_uri() + fragment
    args = _args(url, 1300, 2400, budget_ms)
    done = subprocess.run(
        [*args[:-1], "--dump-dom", args[-1]], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return Rendered(done.stdout, CONSOLE.findall(done.stderr))


def screenshot(page: Path, out: Path, fragment: str = "", height: int = 2400) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    args = _args(page.resolve().as_uri() + fragment, 1300, height, 15_000)
    done = subprocess.run(
        [*args[:-1], f"--screenshot={out}", args[-1]], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]
    return out
