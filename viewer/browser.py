"""A headless Chromium driven over the DevTools protocol: load a viewer page, wait, click, screenshot.

Used by the viewer tests and by ``python -m viewer.screenshot`` (the README image). It needs only the
``chromium`` binary (Debian package ``chromium``; ``RECON_CHROMIUM`` may name another binary) and the
``websockets`` client that viser already depends on; nothing is downloaded.

WebGL runs on SwiftShader (Chromium's CPU rasteriser) with ``--disable-gpu``, so screenshots work on
machines without a GPU or display.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

# Flags for a quiet, self-contained, reproducible headless browser (no network beyond the page).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: ``$RECON_CHROMIUM``, else the first of the usual names on PATH."""
    env = os.environ.get("RECON_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """The browser could not be started or did not answer."""


class HeadlessBrowser:
    """One headless Chromium with one page, controlled over the Chrome DevTools Protocol.

    Use as a context manager::

        with HeadlessBrowser(width=1000, height=700) as b:
            b.navigate("http://127.0.0.1:8080")
            b.wait_for("document.querySelector('canvas') !== null", timeout=30)
            png = b.screenshot()
    """

    def __init__(
        self, width: int = 1000, height: int = 700, binary: str | None = None, timeout: float = 30.0
    ):
        self.width, self.height = int(width), int(height)
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise BrowserError("no chromium binary found (apt-get install chromium, or set RECON_CHROMIUM)")
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._profile: str | None = None
        self._ws = None
        self._next_id = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> HeadlessBrowser:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        from websockets.sync.client import connect

        self._profile = tempfile.mkdtemp(prefix="recon-chromium-")
        args = [
            self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}", "--remote-debugging-port=0", "about:blank",
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._proc.poll() is not None:
                raise BrowserError(f"{self.binary} exited with code {self._proc.returncode} at start")
            if time.monotonic() > deadline:
                raise BrowserError(f"{self.binary} did not open its DevTools port in {self.timeout:.0f} s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as r:
            targets = json.loads(r.read())
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise BrowserError("chromium has no page target")
        self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=self.timeout)
        self.call("Page.enable")
        self.call("Runtime.enable")
        # The window size includes (invisible) browser chrome in new headless mode; pin the viewport.
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001 - closing a dead socket is fine
                pass
            self._ws = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._proc = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # -- protocol ------------------------------------------------------------------------------------

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events that arrive meanwhile are dropped)."""
        if self._ws is None:
            raise BrowserError("browser is not started")
        self._next_id += 1
        msg_id = self._next_id
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"no answer to {method} in {self.timeout:.0f} s")
            reply = json.loads(self._ws.recv(timeout=remaining))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """Value of a JavaScript expression in the page (JSON-serialisable values only)."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            detail = res["exceptionDetails"].get("text")
            raise BrowserError(f"JavaScript error in {expression[:60]!r}: {detail}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.25) -> bool:
        """Poll a JavaScript expression until it is truthy; False when ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(expression):
                    return True
            except BrowserError:
                pass  # the page may be navigating
            time.sleep(interval)
        return False

    def click_button(self, label: str) -> bool:
        """Click the first ``<button>`` whose visible text is ``label``; False when there is none."""
        js = (
            "(() => { const b = [...document.querySelectorAll('button')]"
            f".find(e => e.innerText.trim() === {json.dumps(label)}); if (!b) return false; b.click(); "
            "return true; })()"
        )
        return bool(self.evaluate(js))

    def dismiss_notifications(self) -> None:
        """Remove toast notifications (e.g. viser's "software WebGL" notice) from the page."""
        self.evaluate("document.querySelectorAll('.mantine-Notification-root').forEach(e => e.remove())")

    def screenshot(self) -> bytes:
        """PNG bytes of the page as it is now."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return base64.b64decode(data)

    def pixels(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB screenshot of the page (notifications removed first)."""
        self.dismiss_notifications()
        return png_to_array(self.screenshot())

    def pixels_until(
        self, predicate, timeout: float = 30.0, interval: float = 1.0
    ) -> tuple[bool, np.ndarray]:
        """Take screenshots until ``predicate(pixels)`` holds (the scene may need seconds to arrive and be
        drawn by a software WebGL); returns (whether it held, the last pixels)."""
        deadline = time.monotonic() + timeout
        while True:
            px = self.pixels()
            if predicate(px):
                return True, px
            if time.monotonic() > deadline:
                return False, px
            time.sleep(interval)


def png_to_array(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of PNG bytes."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def foreground_fraction(pixels: np.ndarray, background: tuple[int, int, int], tol: int = 24) -> float:
    """Fraction of pixels (H, W, 3 uint8) whose colour differs from ``background`` by more than ``tol``
    in some channel: how much of a region the scene covers."""
    diff = np.abs(pixels.astype(np.int16) - np.asarray(background, np.int16)).max(axis=-1)
    return float((diff > tol).mean())

