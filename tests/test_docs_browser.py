"""The built docs in a real headless browser: diagrams render, offline.

The site is built with mkdocs, served on 127.0.0.1, and loaded in Chromium
driven over the DevTools protocol. mkdocs-material draws each mermaid diagram
into a *closed* shadow root, which ``chromium --dump-dom`` does not print, so
the test reads the DOM through DevTools with ``pierce`` (shadow roots
included) and waits until each diagram holds an ``<svg>``. Every request the
page makes is recorded: none may leave loopback (the browser also resolves no
other host name, so nothing could).

Skipped, with the reason shown in the summary, without Chromium (Debian:
``apt-get install -y chromium``) or mkdocs (the ``docs`` extra).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from docs_site import MISSING, build_site, mkdocs

websockets_sync = pytest.importorskip("websockets.sync.client", reason="websockets missing")

ROOT = Path(__file__).resolve().parent.parent
RENDER_TIMEOUT_SECONDS = 30
# Chromium's own flags for a quiet, sandbox-free, offline-friendly headless run.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-port=0",
)
_DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


pytestmark = [
    pytest.mark.skipif(_chromium() is None, reason="no Chromium (apt-get install -y chromium)"),
    pytest.mark.skipif(mkdocs() is None, reason=MISSING),
]


# -- serving and driving -----------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Page:
    """One browser tab over the DevTools protocol (flattened session)."""

    def __init__(self, socket: Any, session: str) -> None:
        self._socket = socket
        self._session = session
        self._ids = itertools.count(1)
        self.requested: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        message = {"id": command_id, "method": method, "params": params}
        self._socket.send(json.dumps({**message, "sessionId": self._session}))
        while True:
            reply = self._receive()
            if reply.get("id") == command_id:
                assert "error" not in reply, reply
                result: dict[str, Any] = reply["result"]
                return result

    def wait_for_event(self, method: str) -> None:
        while self._receive().get("method") != method:
            pass

    def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self._socket.recv(timeout=RENDER_TIMEOUT_SECONDS))
        if message.get("method") == "Network.requestWillBeSent":
            self.requested.append(message["params"]["request"]["url"])
        return message


@contextlib.contextmanager
def open_tab() -> Iterator[Page]:
    """A tab of a new headless Chromium (a fresh profile), closed with the browser on exit."""
    chromium = _chromium()
    assert chromium is not None
    # Chromium's helper processes may still write to the profile for a moment
    # after the browser exits: stop the whole group, and never fail on the cleanup.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert browser.stderr is not None
            endpoint = next(
                (m[1] for line in browser.stderr if (m := _DEVTOOLS.search(line))), None
            )
            assert endpoint is not None, "Chromium printed no DevTools address"
            with websockets_sync.connect(endpoint, max_size=None) as socket:
                target = _command(socket, 1, "Target.createTarget", url="about:blank")
                attached = _command(
                    socket, 2, "Target.attachToTarget", targetId=target["targetId"], flatten=True
                )
                tab = Page(socket, attached["sessionId"])
                tab.call("Page.enable")
                yield tab
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(timeout=30)
            if browser.stderr is not None:
                browser.stderr.close()


@pytest.fixture
def page() -> Iterator[Page]:
    with open_tab() as tab:
        tab.call("Network.enable")
        yield tab


def _command(socket: Any, command_id: int, method: str, **params: Any) -> dict[str, Any]:
    """A command to the browser itself (not to a tab), and its result."""
    socket.send(json.dumps({"id": command_id, "method": method, "params": params}))
    while True:
        message = json.loads(socket.recv(timeout=RENDER_TIMEOUT_SECONDS))
        if message.get("id") == command_id:
            result: dict[str, Any] = message["result"]
            return result


def _load(page: Page, url: str) -> None:
    page.call("Page.navigate", url=url)
    page.wait_for_event("Page.loadEventFired")


def _diagrams(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every element whose class list holds "mermaid", through shadow roots too."""
    attributes = node.get("attributes", [])
    classes = dict(zip(attributes[::2], attributes[1::2], strict=True)).get("class", "")
    found = [node] if "mermaid" in classes.split() else []
    for child in [*node.get("children", []), *node.get("shadowRoots", [])]:
        found.extend(_diagrams(child))
    return found


def _holds_svg(node: dict[str, Any]) -> bool:
    if node.get("nodeName", "").lower() == "svg":
        return True
    return any(
        _holds_svg(child) for child in [*node.get("children", []), *node.get("shadowRoots", [])]
    )


def _rendered_diagrams(page: Page) -> int:
    document = page.call("DOM.getDocument", depth=-1, pierce=True)["root"]
    return sum(_holds_svg(diagram) for diagram in _diagrams(document))


def _wait_rendered(page: Page, expected: int) -> int:
    # Polls the browser (another process) for up to RENDER_TIMEOUT_SECONDS; ends at once when done.
    deadline = time.monotonic() + RENDER_TIMEOUT_SECONDS
    rendered = _rendered_diagrams(page)
    while rendered < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        rendered = _rendered_diagrams(page)
    return rendered


def _off_loopback(urls: list[str]) -> list[str]:
    return [
        url
        for url in urls
        if urlsplit(url).scheme in ("http", "https", "ws", "wss")
        and urlsplit(url).hostname != "127.0.0.1"
    ]


# -- the checks --------------------------------------------------------------------


def test_mermaid_diagrams_render_as_svg_without_the_internet(page: Page, base_url: str) -> None:
    source = (ROOT / "docs" / "optimistic-sync-with-push.md").read_text(encoding="utf-8")
    expected = source.count("```mermaid")
    assert expected >= 2  # the page still draws its two flows
    _load(page, f"{base_url}/optimistic-sync-with-push/")

    assert _wait_rendered(page, expected) == expected
    assert any(url.endswith("/assets/vendor/mermaid/mermaid.min.js") for url in page.requested)
    assert _off_loopback(page.requested) == []


def test_the_request_recorder_sees_a_request_that_leaves_loopback(
    page: Page, site: Path, base_url: str
) -> None:
    # Guards the check above: a page asking the internet for a script is caught.
    (site / "probe.html").write_text(
        '<script src="https://cdn.example.com/mermaid.min.js"></script>', encoding="utf-8"
    )
    _load(page, f"{base_url}/probe.html")
    assert _off_loopback(page.requested) == ["https://cdn.example.com/mermaid.min.js"]
