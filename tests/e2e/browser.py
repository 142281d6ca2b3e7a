"""Headless Chromium for end-to-end tests, driven by Playwright for Python.

The browser is the system's Chromium (Debian: ``apt-get install -y chromium``), never
one Playwright downloads: ``playwright install`` is not used. ``KEEL_CHROMIUM`` points
at another binary. When either piece is missing this raises :class:`BrowserMissing`
with the command that fixes it, so a test fails loudly instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = ("install it with `apt-get update && apt-get install -y chromium` (as root), "
                "or set KEEL_CHROMIUM to a Chromium binary")


class BrowserMissing(RuntimeError):
    """No usable Chromium or no Playwright: the message says how to get them."""


def chromium_path() -> str:
    """The Chromium binary to drive: ``KEEL_CHROMIUM``, else the first one on PATH."""
    configured = os.environ.get("KEEL_CHROMIUM")
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise BrowserMissing(f"KEEL_CHROMIUM={configured} is not an executable file")
        return configured
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserMissing(f"Chromium is not installed: {INSTALL_HINT}")


@contextmanager
def headless_chromium(user_data_dir: Path, width: int = 1280, height: int = 900
                      ) -> Iterator[BrowserContext]:
    """A fresh headless Chromium profile in ``user_data_dir``; closed on exit."""
    executable = chromium_path()
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BrowserMissing("Playwright for Python is not installed: run "
                             "`pip install -e '.[test]'` (never `playwright install`)") from exc
    user_data_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(user_data_dir), executable_path=executable, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": width, "height": height},
                device_scale_factor=1, locale="en-GB", timezone_id="UTC")
        except Error as exc:
            raise BrowserMissing(f"{executable} did not start ({exc.message.splitlines()[0]}); "
                                 f"{INSTALL_HINT}") from exc
        try:
            yield context
        finally:
            context.close()
