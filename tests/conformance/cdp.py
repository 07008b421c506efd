"""A headless Chromium driven over the DevTools protocol, for the HTML report tests.

The browser is Debian's ``chromium`` (``.ci/run`` installs it); tests that need it skip
with the reason when it is absent. It talks CDP over ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-separated JSON), so no WebSocket library and no TCP port are
needed, and every page load is watched: console messages, exceptions, log entries and
network requests. ``--proxy-server=127.0.0.1:9`` makes any request that would leave the
machine fail even if the page's own Content-Security-Policy missed it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import zlib

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
         "--mute-audio", "--hide-scrollbars", "--disable-dev-shm-usage",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--remote-debugging-pipe")


def find_browser() -> str | None:
    env = os.environ.get("RESBLOCK_CHROMIUM")
    if env:
        return shutil.which(env)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser process; :meth:`open` loads a page and reports what happened."""

    def __init__(self, exe: str, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="resblock-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def move_fds():  # in the child: the protocol pipes become fds 3 (in) and 4 (out)
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=move_fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._next = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._reader, daemon=True).start()
        self._stderr = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True
                         ).start()

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.events.put({"method": "<closed>"})
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        q = self._replies.get(msg["id"])
                    if q is not None:
                        q.put(msg)
                else:
                    self.events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None):
        with self._lock:
            self._next += 1
            n = self._next
            q = self._replies[n] = queue.Queue()
        msg = {"id": n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        try:
            reply = q.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"chromium did not answer {method} in {self.timeout} s; "
                               f"stderr: {b''.join(self._stderr)[-2000:]!r}") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, path, width: int = 1200) -> Page:
        """Load ``path`` in a fresh tab; return the page once its load event fired."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        for domain in ("Runtime", "Log", "Network", "Page"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        page.send("Page.navigate", {"url": f"file://{os.path.abspath(path)}"})
        page.wait_for("Page.loadEventFired")
        return page

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """One tab: what it logged and requested, JavaScript evaluation, screenshots."""

    def __init__(self, browser: Chromium, session: str, target: str):
        self.browser, self.session, self.target = browser, session, target
        self.console: list[str] = []  # console errors and warnings, exceptions, log errors
        self.requests: list[str] = []  # every URL the page asked for

    def send(self, method, params=None):
        return self.browser.send(method, params, self.session)

    def _note(self, ev):
        if ev.get("sessionId") != self.session:
            return
        m, p = ev["method"], ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                         for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            self.console.append(json.dumps(p.get("exceptionDetails", {}))[:500])
        elif m == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            self.console.append(p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])

    def wait_for(self, method: str):
        deadline = time.monotonic() + self.browser.timeout
        while time.monotonic() < deadline:
            try:
                ev = self.browser.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if ev["method"] == "<closed>":
                raise RuntimeError("chromium exited")
            self._note(ev)
            if ev["method"] == method and ev.get("sessionId") == self.session:
                return ev
        raise TimeoutError(f"no {method} within {self.browser.timeout} s")

    def settle(self, seconds: float = 0.2):
        """Collect the events that arrive within ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self._note(self.browser.events.get(timeout=0.05))
            except queue.Empty:
                pass

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, clip: dict | None = None) -> bytes:
        """PNG of ``clip`` (CSS pixels) or of the whole page."""
        if clip is None:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"]}
        clip = dict(clip, scale=1)
        data = self.send("Page.captureScreenshot",
                         {"format": "png", "clip": clip, "captureBeyondViewport": True})
        return base64.b64decode(data["data"])

    def close(self):
        self.browser.send("Target.closeTarget", {"targetId": self.target})


def png_rgb(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes) to rows of
    RGB pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
        elif kind == b"IDAT":
            idat += body
        pos += n + 12
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows
