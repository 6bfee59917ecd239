"""report.html in a real headless browser (Debian's `chromium`), driven over the DevTools protocol
with the `websockets` client: every plot decodes to a non-empty image, the console stays clean,
and no request leaves the page.

Without chromium the test skips, except under CI=1 or POTSTILL_REQUIRE_BROWSER=1, where it fails
(`.ci/run` installs chromium and sets the variable)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import stop_group
from test_report_support import report_task  # noqa: F401

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--remote-debugging-port=0"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    msg = "chromium not found: `apt-get install -y chromium` (Debian) to run the browser check"
    if os.environ.get("CI") == "1" or os.environ.get("POTSTILL_REQUIRE_BROWSER") == "1":
        pytest.fail(msg + " (required here: CI=1 or POTSTILL_REQUIRE_BROWSER=1)")
    pytest.skip(msg)


class Page:
    """One browser tab over the DevTools protocol (flattened session on the browser socket)."""

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        end = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(end - time.monotonic(), 0.01)))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def open(self, url: str, timeout: float = 30) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        end = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(end - time.monotonic(), 0.01))))
        # late console messages and requests: drain for a moment
        try:
            while True:
                self.events.append(json.loads(self.ws.recv(timeout=0.5)))
        except TimeoutError:
            pass

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, session=True)
        if "exceptionDetails" in r:
            raise AssertionError(r["exceptionDetails"])
        return r["result"].get("value")

    def problems(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry'].get('text')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]


@pytest.fixture()
def page():
    from websockets.sync.client import connect

    exe = chromium()
    # chromium's helper processes (renderer, storage, GPU, utility) can outlive the main one and
    # still write into the profile while it is removed ("Directory not empty: 'Default'" at teardown):
    # the browser gets its own process group, and the whole group is stopped before the cleanup
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            end = time.monotonic() + 30
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                assert proc.poll() is None, f"chromium exited with {proc.returncode}"
                assert time.monotonic() < end, "chromium did not open its DevTools port"
                time.sleep(0.1)
            port, path = port_file.read_text().splitlines()[:2]
            with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30) as ws:
                yield Page(ws)
        finally:
            stop_group(proc)


IMAGES = "[...document.images].map(i => ({id: i.id, w: i.naturalWidth, h: i.naturalHeight, ok: i.complete}))"
DECODE = "Promise.all([...document.images].map(i => i.decode().then(() => true, () => false)))"
LINKS = ("[...document.querySelectorAll('[src],[href],[srcset],[action]')]"
         ".map(e => e.getAttribute('src') || e.getAttribute('href') || e.getAttribute('srcset') || e.getAttribute('action'))")


def test_report_renders_offline_in_chromium(report_task, page, tmp_path):
    run = report_task.parent / "runs" / "tiny"
    html = tmp_path / "report.html"  # a copy: the shared run directory stays read-only
    html.write_text((run / "report.html").read_text())
    url = html.resolve().as_uri()
    page.open(url)

    images = page.eval(IMAGES)
    assert sorted(i["id"] for i in images) == ["plot-cost", "plot-curves", "plot-funnel", "plot-reliability",
                                                "plot-routing"]
    assert all(i["ok"] and i["w"] > 100 and i["h"] > 100 for i in images), images
    assert page.eval(DECODE) == [True] * 5
    assert page.problems() == []
    reqs = page.requests()
    assert [u for u in reqs if not u.startswith("data:image/png;base64,")] == [url]  # the page, nothing else
    assert len(reqs) == 6
    assert all(v.startswith("data:image/png;base64,") for v in page.eval(LINKS))
    text = page.eval("document.body.innerText")
    assert "Routing trade-off" in text and "Break-even" in text
    assert page.eval("document.querySelector('meta[http-equiv=Content-Security-Policy]').content").startswith(
        "default-src 'none'")


def test_the_check_catches_a_page_that_reaches_out(page, tmp_path):
    """The same checks on a page that tries to load a remote image and a script: they fail, so
    the test above would notice a report that did."""
    from potstill.report import CSP

    bad = tmp_path / "bad.html"
    bad.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">'
                   '</head><body><img id="x" src="http://192.0.2.1/x.png"><script>1</script></body></html>')
    page.open(bad.resolve().as_uri())
    assert page.eval(IMAGES) == [{"id": "x", "w": 0, "h": 0, "ok": True}]  # blocked: never decoded
    assert any("Content Security Policy" in p for p in page.problems()), page.problems()
    assert "http://192.0.2.1/x.png" in page.requests()  # the request check above would see it ...
    blocked = [e["params"].get("blockedReason") for e in page.events if e.get("method") == "Network.loadingFailed"]
    assert blocked == ["csp"]  # ... and the page's own policy stopped it before the network
