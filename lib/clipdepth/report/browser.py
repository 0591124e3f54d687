"""Look at the rendered report pages as a reader does: headless Chromium over the DevTools protocol.

Why a module of its own (in the report layer): whether a page reads at a glance is a property of the
page in a browser (how wide the tables lay out, whether the figures load, where the links go), not of
the HTML text. :func:`inspect_page` measures what a reader meets at a given window width,
:func:`screenshot` saves what they see; ``tests/test_browser.py`` asserts on the former and
``python -m clipdepth.report.browser`` writes the README's screenshots.

Why the DevTools protocol and not Selenium: the protocol is Chromium's own (a JSON message per
command over one websocket), it needs no driver binary and no extra Python package
(``websocket-client`` comes with Jupyter), and it can set an exact viewport width and capture a
whole page. The browser is Debian's ``chromium`` (or ``$CLIPDEPTH_CHROMIUM``); :func:`find_chromium`
returns None where there is none, so callers can skip with a reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Browser", "find_chromium", "inspect_page", "main", "screenshot"]

#: Window width at which the pages must read without sideways scrolling (issue 24).
WIDTH = 1280

#: Executables tried in order by :func:`find_chromium` (Debian's package first).
CHROMIUM_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: What :func:`inspect_page` measures, in the page (one expression, returned as JSON).
#: "headline" tables are those marked ``data-view="headline"`` by :mod:`clipdepth.report.comparison_view`;
#: a table is measured against the box it sits in (its nearest ancestor that scrolls or clips).
_INSPECT_JS = r"""
(() => {
  const doc = document.documentElement;
  const box = (el) => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const s = getComputedStyle(p);
      if (['auto', 'scroll', 'hidden'].includes(s.overflowX)) return p;
    }
    return doc;
  };
  const tables = [...document.querySelectorAll('table[data-view="headline"]')].map((t) => {
    const b = box(t);
    const r = t.getBoundingClientRect();
    const caption = t.closest('[data-table]');
    return {
      table: caption ? caption.getAttribute('data-table') : (t.id || ''),
      width: Math.ceil(r.width), right: Math.ceil(r.right + window.scrollX),
      box_client_width: b.clientWidth, box_scroll_width: b.scrollWidth,
      visible: r.width > 0 && r.height > 0,
    };
  });
  const images = [...document.images].map((i) => ({src: i.currentSrc || i.src, natural_width: i.naturalWidth,
                                                   complete: i.complete}));
  const links = [...document.querySelectorAll('a[href]')].map((a) => ({href: a.href, raw: a.getAttribute('href')}));
  const banner = document.querySelector('#banner, .demo-banner, [data-banner]');
  let bannerVisible = false;
  if (banner) {
    const r = banner.getBoundingClientRect();
    const s = getComputedStyle(banner);
    bannerVisible = r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
  }
  const ids = [...document.querySelectorAll('[id]')].map((e) => e.id);
  return JSON.stringify({
    inner_width: window.innerWidth, client_width: doc.clientWidth, scroll_width: doc.scrollWidth,
    body_scroll_width: document.body.scrollWidth, scroll_height: doc.scrollHeight,
    tables, images, links, ids, text: document.body.innerText,
    banner: banner ? banner.innerText : null, banner_visible: bannerVisible,
  });
})()
"""


def find_chromium() -> str | None:
    """The Chromium executable: ``$CLIPDEPTH_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    explicit = os.environ.get("CLIPDEPTH_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() or shutil.which(explicit) else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


class Browser:
    """One headless Chromium and one page (tab), driven by DevTools protocol commands.

    Use as a context manager; :meth:`open` loads a file or URL at a fixed viewport width, :meth:`evaluate`
    runs JavaScript and returns its value, :meth:`screenshot_png` captures the page.
    """

    def __init__(self, executable: str | None = None, width: int = WIDTH, height: int = 900, timeout: float = 60.0):
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("no Chromium found (install Debian's chromium, or set CLIPDEPTH_CHROMIUM)")
        self.width, self.height, self.timeout = width, height, timeout
        # a throw-away profile, removed on close (and by the interpreter if the caller forgets)
        self._profile_dir = tempfile.TemporaryDirectory(prefix="clipdepth-chromium-", ignore_cleanup_errors=True)
        self._profile = self._profile_dir.name
        args = [exe, "--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--remote-allow-origins=*",
                "--remote-debugging-port=0", f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
                "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root (CI containers)
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0
        try:
            port = self._port()
            self._ws = self._connect(port)
            self.call("Page.enable")
            self.call("Runtime.enable")
            # pages are checked as an offline reader sees them, and a CDN script that the network silently
            # drops (nbconvert's require.js and MathJax) must not hold the load event for minutes
            self.call("Network.enable")
            self.call("Network.setBlockedURLs", urls=["http://*", "https://*"])
            self._viewport(height)
        except BaseException:
            self.close()
            raise

    def _port(self) -> int:
        """The debugging port Chromium chose, from the ``DevToolsActivePort`` file in its profile."""
        path = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with status {self._proc.returncode} before it listened")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(path.read_text().splitlines()[0])
            time.sleep(0.05)
        raise TimeoutError(f"Chromium did not open its debugging port within {self.timeout:.0f} s")

    def _connect(self, port: int) -> Any:
        import websocket  # websocket-client (a Jupyter dependency, declared in pyproject.toml)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as response:
            targets = json.load(response)
        page = next(t for t in targets if t.get("type") == "page")
        return websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one protocol command and return its result (events that arrive meanwhile are dropped)."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})

    def _wait_event(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if json.loads(self._ws.recv()).get("method") == method:
                return
        raise TimeoutError(f"no {method} within {self.timeout:.0f} s")

    def _viewport(self, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def open(self, target: str | os.PathLike[str]) -> None:
        """Load a URL, or a local file by path, and wait for its load event (images included)."""
        url = str(target)
        if "://" not in url:
            url = Path(target).resolve().as_uri()
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot_png(self, max_height: int | None = None) -> bytes:
        """The page as PNG at the viewport width, the whole height (or its first ``max_height`` pixels)."""
        import base64

        height = int(self.evaluate("document.documentElement.scrollHeight"))
        if max_height:
            height = min(height, max_height)
        clip = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        return base64.b64decode(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._profile_dir.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def inspect_page(browser: Browser, page: str | os.PathLike[str]) -> dict[str, Any]:
    """What a reader meets on ``page`` at the browser's width.

    Keys: ``inner_width``, ``client_width``, ``scroll_width`` (the document's; larger than
    ``client_width`` means the page scrolls sideways), ``tables`` (per headline comparison table: its
    ``width``, its box's ``box_client_width``/``box_scroll_width``, ``right`` edge), ``images``
    (``src``, ``natural_width``), ``links`` (``href`` resolved, ``raw``), ``broken_links`` (local
    links whose file does not exist, or whose ``#fragment`` names no element of this page), ``ids``,
    ``text`` (the visible text), ``banner`` and ``banner_visible``.
    """
    browser.open(page)
    info = json.loads(browser.evaluate(_INSPECT_JS))
    here = Path(page).resolve()
    broken = []
    for link in info["links"]:
        parsed = urllib.parse.urlparse(link["href"])
        if parsed.scheme != "file":
            continue
        target = Path(urllib.parse.unquote(parsed.path))
        if not target.exists():
            broken.append(link["raw"])
        elif parsed.fragment and target == here and parsed.fragment not in info["ids"]:
            broken.append(link["raw"])
    info["broken_links"] = broken
    return info


def screenshot(page: str | os.PathLike[str], out: str | os.PathLike[str], width: int = WIDTH,
               max_height: int = 1400, colours: int | None = 256, browser: Browser | None = None) -> Path:
    """Save a PNG of ``page`` at ``width`` px (its first ``max_height`` px); with ``colours`` a palette
    PNG (Pillow's quantisation), which keeps README screenshots small."""
    from PIL import Image

    from clipdepth._files import atomic_write_bytes

    with contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(Browser(width=width))
        browser.open(page)
        png = browser.screenshot_png(max_height=max_height)
    if colours:
        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colours)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        png = buffer.getvalue()
    return atomic_write_bytes(Path(out), png)


def _pages(profile_dir: Path, names: Sequence[str]) -> Iterator[tuple[Path, str]]:
    for name in names:
        yield profile_dir / f"{name}.html", name


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clipdepth.report.browser reports/demo docs/``: screenshots of a report folder's index and
    notebook pages (``--pages``), at ``--width`` px."""
    parser = argparse.ArgumentParser(prog="python -m clipdepth.report.browser",
                                     description="Screenshots of rendered report pages in headless Chromium.")
    parser.add_argument("profile_dir", type=Path, help="a report folder, e.g. reports/demo")
    parser.add_argument("out_dir", type=Path, help="where the PNGs go, e.g. docs")
    parser.add_argument("--pages", default="index,01_token_ablation",
                        help="comma-separated page names without .html (default: index,01_token_ablation)")
    parser.add_argument("--width", type=int, default=WIDTH, help=f"window width in px (default {WIDTH})")
    parser.add_argument("--max-height", type=int, default=1400, help="crop each page to its first N px (1400)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.pages.split(",") if n.strip()]
    missing = [str(p) for p, _ in _pages(args.profile_dir, names) if not p.is_file()]
    if missing:
        print(f"browser: error: no such page(s): {', '.join(missing)} (run ./run_all.sh first)", file=sys.stderr)
        return 2
    if find_chromium() is None:
        print("browser: error: no Chromium found (apt-get install chromium, or set CLIPDEPTH_CHROMIUM)",
              file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with Browser(width=args.width) as browser:
        for page, name in _pages(args.profile_dir, names):
            path = screenshot(page, args.out_dir / f"{name}.png", width=args.width, max_height=args.max_height,
                              browser=browser)
            print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
