"""Every HTML page of a report renders in headless Chromium: a non-empty plot, no JavaScript
error, nothing fetched from the network; a screenshot of each page is written.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (fds 3
and 4, NUL-terminated JSON), which needs nothing beyond the standard library and reports
uncaught exceptions, console errors and failed loads as events instead of log lines.
"""

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from test_report import build_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")

# Per plot div: how many traces, how many data points drawn (Plotly's own count: the data
# arrive base64-encoded, so p.data has no plain arrays), and whether Plotly drew it
# (an SVG for 2D, a WebGL canvas for 3D scenes).
_PLOTS = """JSON.stringify([...document.querySelectorAll('.js-plotly-plot')].map(p => ({
  traces: (p._fullData || []).length,
  points: (p._fullData || []).reduce((n, t) => n + (t.visible === true ? t._length || 0 : 0), 0),
  svg: p.querySelectorAll('svg.main-svg').length,
  canvas: p.querySelectorAll('canvas').length,
  scene: !!(p._fullLayout && p._fullLayout.scene),
  drawn: !!p._fullLayout,
})))"""


class Browser:
    """A headless Chromium with one DevTools session per page."""

    def __init__(self, profile: Path):
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4; move our ends out of the way first.
        r, w = fcntl.fcntl(to_chrome, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(from_chrome, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome)
        os.close(from_chrome)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=lambda: (os.dup2(r, 3), os.dup2(w, 4)), close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r)
        os.close(w)
        self._next = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._in, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._replies:
                    self._replies[msg["id"]].put(msg)
                else:
                    self.events.put(msg)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self._next += 1
        reply: queue.Queue = queue.Queue()
        self._replies[self._next] = reply
        msg = {"id": self._next, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        answer = reply.get(timeout=timeout)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # already gone: still reap it below
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)


def render(browser: Browser, page: Path, screenshot: Path, timeout: float = 60, probes: dict | None = None) -> dict:
    """Open ``page``, wait for its plots, and return what it drew and what went wrong, and
    the value of each JavaScript expression in ``probes`` (by its key) once drawn."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", session)
    browser.call("Emulation.setDeviceMetricsOverride", session, width=1400, height=900, deviceScaleFactor=1,
                 mobile=False)
    browser.call("Page.navigate", session, url=page.as_uri())
    errors, requests, loaded = [], [], False
    deadline = time.monotonic() + timeout
    plots: list = []
    while time.monotonic() < deadline:
        try:
            ev = browser.events.get(timeout=0.2)
        except queue.Empty:
            ev = None
        if ev and ev.get("sessionId") == session:
            method, p = ev["method"], ev.get("params", {})
            if method == "Page.loadEventFired":
                loaded = True
            elif method == "Runtime.exceptionThrown":
                errors.append(p["exceptionDetails"].get("exception", {}).get("description")
                              or p["exceptionDetails"]["text"])
            elif method == "Runtime.consoleAPICalled" and p["type"] == "error":
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(p["entry"]["text"] + " " + p["entry"].get("url", ""))
            elif method == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
        if loaded and ev is None:  # quiet after load: are the plots drawn?
            value = browser.call("Runtime.evaluate", session, expression=_PLOTS, returnByValue=True)
            plots = json.loads(value["result"]["value"])
            if plots and all(x["drawn"] for x in plots):
                break
    if any(x["scene"] for x in plots):
        time.sleep(0.5)  # let WebGL finish a frame before the screenshot
    shot = browser.call("Page.captureScreenshot", session, format="png")
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    probed = {k: browser.call("Runtime.evaluate", session, expression=js, returnByValue=True)["result"].get("value")
              for k, js in (probes or {}).items()}
    browser.call("Target.closeTarget", targetId=target)
    return {"loaded": loaded, "plots": plots, "errors": errors, "requests": requests, "probes": probed}


# The headline's points at the comparison step (its first panel, x axis 'x'), as Plotly holds them.
_HEADLINE = """JSON.stringify(document.getElementById('headline')._fullData.filter(t => t.xaxis === 'x').map(t => ({
  y: Array.from(t.y), x: Array.from(t.x), text: Array.from(t.text)})))"""


@pytest.fixture(scope="module")
def report_pages(tmp_path_factory, small_corpus):
    """index.html and one page of each kind (every coordinates page is the same figure of another run)."""
    built = build_sweep(tmp_path_factory, small_corpus)
    out = built["sweep"]
    plots = sorted((out / "plots").glob("*.html"))
    coords = [p for p in plots if p.name.startswith("coords_")]
    return out, [out / "index.html", *(p for p in plots if p not in coords), *coords[:1]]


def check_page(seen: dict, where: str, shot: Path) -> None:
    assert seen["loaded"], where
    assert seen["errors"] == [], where
    assert seen["plots"], f"no plot on {where}"
    for plot in seen["plots"]:
        assert plot["drawn"] and plot["traces"] > 0 and plot["points"] > 0, (where, plot)
        assert plot["canvas"] > 0 if plot["scene"] else plot["svg"] > 0, (where, plot)
    offline = [u for u in seen["requests"] if not u.startswith(("file:", "data:", "about:"))]
    assert offline == [], where
    assert shot.stat().st_size > 10_000


def check_headline(points: list[dict], summary: str) -> None:
    """Each point of the headline is the Summary's line for that variant: its Δ and its verdict."""
    answer = summary[summary.index("## Answer"):summary.index("At equal training time")]
    # '- ngt_default vs baseline [group] at step 10: +0.0094 [...], indistinguishable; ...': the point is named
    # 'ngt_default (step 10) [group]'; ' at step' only where the variant stopped before the comparison step
    lines = {m[1] + (f" (step {m[3]})" if m[3] else "") + (m[2] or ""): m[4]
             for m in re.finditer(r"^- (.*?) vs baseline( \[.*?\])?(?: at step (\d+))?: (.*)$", answer, re.M)}
    drawn = [(y, x, words) for trace in points for y, x, words in zip(trace["y"], trace["x"], trace["text"])]
    assert sorted(y for y, _, _ in drawn) == sorted(y for y, rest in lines.items() if "not compared" not in rest)
    for y, x, words in drawn:
        assert lines[y].startswith(f"{x:+.4f} [") and f", {words}" in lines[y], (y, x, words)


def test_every_page_renders_offline_without_errors(report_pages, tmp_path_factory):
    out, pages = report_pages
    names = {p.name for p in pages}
    assert {"index.html", "losses.html", "throughput.html", "diagnostics.html"} <= names
    assert any(n.startswith("coords_") for n in names)
    shots = tmp_path_factory.mktemp("screenshots")
    browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        for page in pages:
            shot = shots / f"{page.stem}.png"
            seen = render(browser, page, shot, probes={"headline": _HEADLINE} if page.name == "index.html" else {})
            check_page(seen, f"{page.relative_to(out)} (screenshot {shot})", shot)
            if page.name == "index.html":
                check_headline(json.loads(seen["probes"]["headline"]), (out / "Summary.md").read_text())
    finally:
        browser.close()
    print(f"screenshots in {shots}")
