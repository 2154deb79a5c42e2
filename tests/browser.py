"""A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): no
WebDriver, no extra package, only the browser binary. Enough to load a page, run JavaScript in it
and wait for what it renders.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path


def find_chromium() -> str | None:
    """The Chromium binary (Debian's `chromium`, or a chromium-browser/google-chrome on PATH), else None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class Browser:
    """One headless Chromium; `page(url)` opens a tab whose `eval` runs JavaScript and returns its value."""

    def __init__(self, exe: str, profile: Path):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # The protocol's fds must be 3 (commands in) and 4 (replies out) in the browser; the pipe ends may
        # themselves be 3 or 4 here, so move them above both before the child copies them into place.
        a, b = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)

        def wire() -> None:
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-extensions", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--window-size=1600,1000", "about:blank"],
            # close_fds=False: subprocess would close 3 and 4 after `wire` ran; Python's own descriptors are
            # non-inheritable anyway, so nothing else leaks into the browser.
            preexec_fn=wire, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(a)
        os.close(b)
        self._buf = b""
        self._id = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        """One protocol command; its result (RuntimeError on a protocol error)."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"no reply to {method} in {timeout} s")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed its protocol pipe")
                self._buf += chunk

    def page(self, url: str) -> "Page":
        """A new tab showing `url`."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        p = Page(self, session)
        p.goto(url)
        return p

    def close(self) -> None:
        """Quit the browser."""
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass


class Page:
    """One tab."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def goto(self, url: str) -> None:
        """Navigate (the page's scripts go on loading after this returns; use `wait_for`)."""
        self.browser.send("Page.navigate", {"url": url}, self.session)

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        res = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                     "awaitPromise": True}, self.session)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, every: float = 0.5):
        """Poll a JavaScript expression until it is truthy; returns its value (TimeoutError otherwise)."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.eval(expression)
            except RuntimeError:
                last = None
            if last:
                return last
            time.sleep(every)
        text = (self.eval("document.body ? document.body.innerText : ''") or "")[:600]
        raise TimeoutError(f"{expression[:100]} stayed falsy for {timeout} s; page text: {text!r}")
