"""Headless Chromium driven through the Chrome DevTools protocol (websocket-client), for tests that look
at a page as a person would: console errors, images that decode, requests made, a screenshot.

`find_chromium()` returns Debian's chromium, installing it with apt-get when it is missing and this
process may (root, apt-get present); tests skip with the reason when it cannot be had.
"""

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
         "--hide-scrollbars"]


def find_chromium() -> tuple[str | None, str]:
    """(path of the chromium binary, or None with the reason)."""
    found = shutil.which("chromium")
    if found:
        return found, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed and apt-get cannot install it here (needs root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(Path(tempfile.gettempdir()) / "diffspace-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # why: test workers may ask at once; apt-get takes one at a time
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            if shutil.which("chromium"):  # another worker installed it meanwhile
                break
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if res.returncode != 0:
                return None, f"`{' '.join(cmd)}` failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}"
    found = shutil.which("chromium")
    return (found, "") if found else (None, "apt-get installed no chromium binary")


class Browser:
    """One headless Chromium with a fresh profile and one page, closed by `close()`."""

    def __init__(self, binary: str, width: int = 1200, height: int = 900):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = Path(self.profile) / "DevToolsActivePort", time.time() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id, self.events = 0, []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept in self.events."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def open(self, path: Path, settle_s: float = 0.5) -> None:
        """Load a file and wait for its load event (then a moment for late console messages)."""
        self.events.clear()
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = time.time() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.time() > deadline:
                raise RuntimeError(f"{path} did not finish loading")
            self.events.append(json.loads(self.ws.recv()))
        self.evaluate("1")  # drains events queued before it
        time.sleep(settle_s)
        self.evaluate("1")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries since the last `open`."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "exception"))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return out

    def requests(self) -> list[str]:
        """URLs the page asked for since the last `open` (data: URIs included)."""
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self, out: Path, width: int = 1200) -> None:
        """A PNG of the whole page, `width` CSS pixels wide."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        Path(out).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
