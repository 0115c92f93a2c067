"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
on file descriptors 3 and 4, each ended by a NUL byte): no websocket, no package beyond the browser.

    with Browser() as b:
        page = b.open(Path("report.html"), screenshot=Path("shot.png"))
        page["sections"], page["errors"]   # ids of <section> elements; console errors, exceptions, failed loads

One browser serves every page of a test (a start costs ~0.5 s, a page ~0.2 s). Debian's `chromium` package;
`find_chromium()` is None where it is absent (the tests then skip, naming the package).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe"]


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, width: int = 1400, height: int = 900, timeout_s: float = 30.0):
        exe = find_chromium()
        if exe is None:
            raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.profile = tempfile.mkdtemp(prefix="pt-chromium-")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds():  # in the child: the protocol's descriptors 3 (commands in) and 4 (replies out), inheritable
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)  # first away from 3 and 4, which may be these very pipes
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                                      "about:blank"], close_fds=False, preexec_fn=fds,  # dup2'd 3 and 4 stay open
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    # -- the protocol ---------------------------------------------------------------------------------
    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else ""
                raise RuntimeError(f"chromium closed the protocol pipe: {err}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout_s
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    # -- pages --------------------------------------------------------------------------------------------
    def open(self, path: Path, screenshot: Optional[Path] = None, full_page: bool = False) -> dict:
        """Load a file; {"sections": [...ids], "errors": [...], "title"}; with `screenshot`, a PNG of the
        viewport (or of the whole page)."""
        self.events = []
        self.call("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        self.wait_event("Page.loadEventFired")
        js = ("JSON.stringify({sections: [...document.querySelectorAll('section[id]')].map(s => s.id), "
              "title: document.title, images: [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0]),"
              "height: document.documentElement.scrollHeight})")
        page = json.loads(self.call("Runtime.evaluate", session=True, expression=js, returnByValue=True)["result"]["value"])
        if screenshot is not None:
            height = min(page["height"], 16000) if full_page else self.height
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=self.width, height=height,
                      deviceScaleFactor=1, mobile=False)
            data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
            Path(screenshot).write_bytes(base64.b64decode(data))
            self.call("Emulation.clearDeviceMetricsOverride", session=True)
        page["errors"] = self.errors()
        return page

    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and failed loads seen since the last `open`."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- one browser for the whole session
_shared: Optional[Browser] = None
BASE_SECTIONS = {"summary", "recipe", "curves", "bill", "energy"}


def shared() -> Optional[Browser]:
    """A browser started on first use and closed at exit; None without chromium."""
    global _shared
    if _shared is None and find_chromium() is not None:
        import atexit

        _shared = Browser()
        atexit.register(_shared.close)
    return _shared


def check_report(run_dir, want: set = frozenset(), screenshot: Optional[Path] = None) -> dict:
    """`powertrain report RUN` for a run, loaded in headless Chromium: no console error, exception or failed
    load; every figure decodes; the DOM holds the base sections and `want`. Without chromium the page is
    still rendered and its sections checked in the HTML (CI has chromium: .ci/run installs it)."""
    import re

    from powertrain.report.html import report

    path = report([run_dir], out=Path(tempfile.mkdtemp(prefix="pt-report-")) / f"{Path(run_dir).name}.html")
    need = BASE_SECTIONS | set(want)
    b = shared()
    if b is None:
        found = set(re.findall(r'<section id="([^"]+)"', path.read_text()))
        assert need <= found, f"{path}: missing sections {need - found}"
        return {"sections": sorted(found), "errors": [], "images": []}
    page = b.open(path, screenshot=screenshot)
    assert page["errors"] == [], f"{path}: {page['errors']}"
    assert need <= set(page["sections"]), f"{path}: missing sections {need - set(page['sections'])}"
    assert page["images"] and all(ok for _, ok in page["images"]), [alt for alt, ok in page["images"] if not ok]
    return page
