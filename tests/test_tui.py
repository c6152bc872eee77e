"""The Textual demo (examples/tui), driven headless by Textual's Pilot.

Each of the seven use cases is played with key presses or clicks, and checked
on the store (state, is_syncing, local_revision, server_revision) and on the
widgets. The simulated server holds every response at a Gate the test
releases: no sleeping, no timing.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Label, Log, OptionList, Static, Switch

from examples.tui.app import DemoApp, Heart
from examples.tui.backend import ServerRecord
from examples.tui.live_backend import LiveBackend
from examples.tui.model import KEY, LikeState
from examples.tui.persistence import load_app
from examples.tui.screenshot import take_screenshot
from examples.tui.simulated import OTHER_DEVICE_ID, Gate, SimulatedServer
from examples.tui.use_cases import USE_CASES
from optisync import PushOutcome

SIZE = (120, 38)
DEVICE = 1


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def server(gate: Gate) -> SimulatedServer:
    return SimulatedServer(wait=gate)


@pytest.fixture
def app(server: SimulatedServer, tmp_path: Path) -> DemoApp:
    return DemoApp(server, state_file=tmp_path / "app.json", device_id=DEVICE)


def text(app: DemoApp, selector: str) -> str:
    return str(app.query_one(selector, Label).content)


def heart_liked(app: DemoApp) -> bool:
    return app.query_one("#heart", Heart).liked


def log_lines(app: DemoApp) -> list[str]:
    return list(app.query_one("#log", Log).lines)


async def until(pilot: Pilot[None], condition: Callable[[], bool]) -> None:
    """Let the app process messages until ``condition`` holds (no clock involved)."""
    for _ in range(200):
        if condition():
            return
        await pilot.pause()
    raise AssertionError("the app never reached the expected state")


async def answer(pilot: Pilot[None], gate: Gate, app: DemoApp) -> None:
    """Release the held response and let the store finish its cycle."""
    gate.release()
    await until(pilot, lambda: not app.store.is_syncing(KEY))
    await pilot.pause()


# -- 1. optimistic update ------------------------------------------------------


async def test_use_case_1_a_tap_shows_at_once_and_saving_until_the_response(
    app: DemoApp, server: SimulatedServer, gate: Gate
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        assert text(app, "#saving") == "Idle: no request in flight"
        await pilot.press("space")
        store = app.store
        assert store.state.liked is True
        assert store.is_syncing(KEY)
        assert store.local_revision(KEY) == 1
        assert heart_liked(app)
        assert text(app, "#liked-label") == "Liked"

        await gate.wait_for_held(1)
        await pilot.pause()
        assert text(app, "#saving") == "Saving 1..."
        assert text(app, "#local-revision") == "local revision: 1"
        assert server.database == ServerRecord(
            liked=True, revision=1, device_id=DEVICE, local_revision=1
        )

        await answer(pilot, gate, app)
        assert store.state == LikeState(liked=True, server_revision=1)
        assert store.server_revision(KEY) == 1
        assert server.requests == 1
        assert text(app, "#saving") == "Idle: no request in flight"
        assert text(app, "#server-revision") == "server revision: 1"
        assert text(app, "#db-writer") == f"last written by: device {DEVICE} (this app)"


async def test_clicking_the_heart_taps_it(app: DemoApp, gate: Gate) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click("#heart")
        assert app.store.state.liked is True
        assert app.store.local_revision(KEY) == 1
        await gate.wait_for_held(1)
        await answer(pilot, gate, app)


# -- 2. coalescing -------------------------------------------------------------


async def test_use_case_2_three_rapid_taps_make_one_request_and_one_follow_up(
    app: DemoApp, server: SimulatedServer, gate: Gate
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space", "space", "space")
        store = app.store
        assert store.local_revision(KEY) == 3
        assert store.state.liked is True
        await gate.wait_for_held(1)
        await pilot.pause()
        assert server.requests == 1
        assert server.database.local_revision == 1
        assert text(app, "#saving") == "Saving 1..."

        gate.release()  # request 1 was behind: the follow-up sends the value shown now
        await gate.wait_for_held(1)
        await pilot.pause()
        assert server.requests == 2
        assert server.database == ServerRecord(
            liked=True, revision=2, device_id=DEVICE, local_revision=3
        )
        assert store.is_syncing(KEY)
        assert text(app, "#saving") == "Saving 2..."

        await answer(pilot, gate, app)
        assert server.requests == 2
        assert store.state == LikeState(liked=True, server_revision=2)
        assert store.server_revision(KEY) == 2
        assert heart_liked(app)


async def test_the_three_taps_key_and_button_are_coalesced_the_same_way(
    app: DemoApp, server: SimulatedServer, gate: Gate
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await pilot.click("#triple-tap")
        assert app.store.local_revision(KEY) == 6
        assert app.store.state.liked is False
        await gate.wait_for_held(1)
        gate.release()
        await gate.wait_for_held(1)
        await answer(pilot, gate, app)
        assert server.requests == 2
        assert app.store.state == LikeState(liked=False, server_revision=2)


# -- 3. a push from another device ---------------------------------------------


async def test_use_case_3_a_push_from_the_other_device_shows_at_once(
    app: DemoApp, server: SimulatedServer
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")
        store = app.store
        assert store.state == LikeState(liked=True, server_revision=1)
        assert store.server_revision(KEY) == 1
        assert store.local_revision(KEY) == 0
        assert not store.is_syncing(KEY)
        assert heart_liked(app)
        assert text(app, "#server-revision") == "server revision: 1"
        assert (
            text(app, "#db-writer")
            == f"last written by: device {OTHER_DEVICE_ID} (the other device)"
        )
        assert "push: revision 1 liked=True from device 7 -> applied" in log_lines(app)

        await pilot.click("#set-not-liked")
        assert store.state == LikeState(liked=False, server_revision=2)
        assert text(app, "#db-value") == "value: ♡ not liked"
        assert server.requests == 0


# -- 4. push switched off ------------------------------------------------------


async def test_use_case_4_with_pushes_off_the_app_catches_up_on_the_next_tap(
    app: DemoApp, server: SimulatedServer, gate: Gate
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        assert server.push_enabled is False
        assert app.query_one("#push-switch", Switch).value is False

        await pilot.press("a")
        store = app.store
        assert server.database.revision == 1
        assert store.state == LikeState(liked=False, server_revision=-1)
        assert store.server_revision(KEY) == -1
        assert not heart_liked(app)
        assert text(app, "#db-value") == "value: ♥ liked"

        await pilot.press("space")
        await gate.wait_for_held(1)
        await answer(pilot, gate, app)
        assert store.state == LikeState(liked=True, server_revision=2)
        assert store.server_revision(KEY) == 2
        assert server.database.revision == 2
        assert text(app, "#server-revision") == "server revision: 2"


async def test_clicking_the_push_switch_turns_pushes_back_on(
    app: DemoApp, server: SimulatedServer
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await pilot.click("#push-switch")
        await pilot.pause()
        assert server.push_enabled is True
        await pilot.press("a")
        assert app.store.state.liked is True


# -- 5. a push while a request is in flight ------------------------------------


async def test_use_case_5_a_push_during_a_request_wins_and_stops_the_follow_up(
    app: DemoApp, server: SimulatedServer, gate: Gate
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        await gate.wait_for_held(1)
        await pilot.press("n")  # the other device writes while request 1 is in flight
        store = app.store
        assert store.is_syncing(KEY)
        assert store.state == LikeState(liked=False, server_revision=2)
        assert store.server_revision(KEY) == 2
        assert not heart_liked(app)

        await answer(pilot, gate, app)
        assert server.requests == 1  # no follow-up: the push was the newest word
        assert gate.held == 0
        assert store.state == LikeState(liked=False, server_revision=2)  # old response ignored
        assert store.server_revision(KEY) == 2
        assert server.database.liked is False
        assert not heart_liked(app)
        assert text(app, "#saving") == "Idle: no request in flight"


# -- 6. reload on error through on_finish --------------------------------------


async def test_use_case_6_a_failed_request_reloads_the_value_from_the_server(
    app: DemoApp, server: SimulatedServer, gate: Gate
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        assert server.fail_next_request is True
        assert "ARMED" in str(app.query_one("#fail-next", Button).label)

        await pilot.press("space")
        store = app.store
        assert store.state.liked is True
        await gate.wait_for_held(1)
        gate.release()  # the request fails; on_finish reloads (held at the gate too)
        await gate.wait_for_held(1)
        await until(pilot, lambda: text(app, "#saving") == "Reloading from the server...")
        assert not store.is_syncing(KEY)
        assert store.state.liked is True

        gate.release()
        await until(pilot, lambda: not store.state.liked)
        assert store.state == LikeState(liked=False, server_revision=0)
        assert store.local_revision(KEY) == 1
        assert not heart_liked(app)
        assert server.database.revision == 0
        assert server.fail_next_request is False
        await pilot.pause()
        assert text(app, "#saving") == "Idle: no request in flight"
        assert any("request 1 failed" in line for line in log_lines(app))


async def test_pressing_fail_twice_disarms_it(app: DemoApp, server: SimulatedServer) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click("#fail-next")
        await pilot.press("f")
        assert server.fail_next_request is False
        assert str(app.query_one("#fail-next", Button).label) == "Next request fails (f)"


# -- 7. persistence across a restart -------------------------------------------


async def test_use_case_7_restart_restores_state_revision_and_device_id(
    app: DemoApp, server: SimulatedServer, gate: Gate, tmp_path: Path
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        await gate.wait_for_held(1)
        await answer(pilot, gate, app)
        await pilot.press("a")  # revision 2 pushed
        before = app.store

        await pilot.press("r")
        store = app.store
        assert store is not before
        assert before.is_closed
        assert store.state == LikeState(liked=True, server_revision=2)
        assert store.device_id == DEVICE
        assert store.local_revision(KEY) == 0
        assert max(store.server_revision(KEY), store.state.server_revision) == 2
        assert heart_liked(app)
        assert text(app, "#server-revision") == "server revision: 2"
        assert text(app, "#local-revision") == "local revision: 0"

        # The server replayed its latest change to the new store: stale, thanks to the file.
        assert "push: revision 2 liked=True from device 7 -> stale" in log_lines(app)
        stale = ServerRecord(liked=False, revision=2, device_id=OTHER_DEVICE_ID, local_revision=1)
        assert store.apply_push(stale) is PushOutcome.STALE
        assert store.state.liked is True

    saved = json.loads((tmp_path / "app.json").read_text())
    assert saved["device_id"] == DEVICE
    assert saved["server_revisions"] == {KEY: 2}


async def test_a_new_app_on_the_same_file_restores_the_saved_store(
    app: DemoApp, server: SimulatedServer, gate: Gate, tmp_path: Path
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        await gate.wait_for_held(1)
        await answer(pilot, gate, app)

    again = DemoApp(server, state_file=tmp_path / "app.json", device_id=99)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert again.store.device_id == DEVICE
        assert again.store.state == LikeState(liked=True, server_revision=1)
        assert heart_liked(again)
        assert any(line.startswith("restored from app.json") for line in log_lines(again))


async def test_restart_during_a_request_cancels_it_and_keeps_the_tap(
    app: DemoApp, server: SimulatedServer, gate: Gate
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        await gate.wait_for_held(1)
        await pilot.click("#restart")
        assert gate.held == 0
        assert app.store.state.liked is True
        assert not app.store.is_syncing(KEY)
        assert load_app(app.state_file) is not None


# -- the --live backend ---------------------------------------------------------


async def test_with_the_live_backend_a_push_during_a_request_still_wins(tmp_path: Path) -> None:
    gate = Gate()
    backend = LiveBackend(database=tmp_path / "live.sqlite", wait=gate)
    app = DemoApp(backend, state_file=tmp_path / "app.json", device_id=DEVICE)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        await gate.wait_for_held(1)  # acked by the server, held before the store sees it
        store = app.store
        assert backend.database.device_id == DEVICE
        await pilot.press("n")
        await until(pilot, lambda: store.state.server_revision == 2)
        assert store.state == LikeState(liked=False, server_revision=2)
        assert store.is_syncing(KEY)

        await answer(pilot, gate, app)
        assert store.state == LikeState(liked=False, server_revision=2)
        assert store.server_revision(KEY) == 2
        assert gate.held == 0
        assert backend.database == ServerRecord(
            liked=False, revision=2, device_id=OTHER_DEVICE_ID, local_revision=1
        )
        assert (
            text(app, "#db-writer")
            == f"last written by: device {OTHER_DEVICE_ID} (the other device)"
        )


# -- controls and help ----------------------------------------------------------


async def test_latency_keys_and_buttons_step_the_latency(
    app: DemoApp, server: SimulatedServer
) -> None:
    async with app.run_test(size=SIZE) as pilot:
        assert text(app, "#latency") == "latency: 2 s"
        await pilot.press("plus")
        assert server.latency == 3.0
        await pilot.click("#latency-down")
        await pilot.press("minus")
        assert server.latency == 1.0
        assert text(app, "#latency") == "latency: 1 s"
        for _ in range(10):
            await pilot.press("minus")
        assert server.latency == 0.0


async def test_keys_1_to_7_show_the_help_of_each_use_case(app: DemoApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        for number in range(len(USE_CASES), 0, -1):
            await pilot.press(str(number))
            await pilot.pause()
            assert app.query_one("#use-cases", OptionList).highlighted == number - 1
            shown = str(app.query_one("#use-case-help", Static).content)
            assert shown == USE_CASES[number - 1].help_text(number)


async def test_clicking_a_use_case_shows_its_help(app: DemoApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click("#use-cases", offset=(4, 5))
        await pilot.pause()
        shown = str(app.query_one("#use-case-help", Static).content)
        assert shown.startswith("5. A push while a request is in flight")


async def test_the_screenshot_helper_saves_an_svg_of_the_app(tmp_path: Path) -> None:
    path = await take_screenshot(tmp_path / "tui.svg")
    svg = path.read_text()
    assert svg.startswith("<svg")
    assert "Saving&#160;1..." in svg or "Saving 1..." in svg


async def test_closing_the_live_backend_leaves_no_unretrieved_future_exception(
    tmp_path: Path,
) -> None:
    # What `python -m examples.tui --live` printed on quit: an exception set on
    # a future nobody awaited, reported by asyncio when the future is collected.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    try:
        backend = LiveBackend(database=tmp_path / "live.sqlite", latency=0)
        await backend.start()
        await backend.write(True, local_revision=1, device_id=DEVICE)
        await backend.aclose()
        del backend
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert [context["message"] for context in reported] == []


async def test_the_screen_says_it_is_connected_to_the_live_server(tmp_path: Path) -> None:
    backend = LiveBackend(database=tmp_path / "live.sqlite", latency=0)
    app = DemoApp(backend, state_file=tmp_path / "app.json", device_id=DEVICE)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert backend.url is not None
        expected = f"live server {backend.url} (started in this process)"
        assert app.sub_title == f"connected to the {expected}"
        assert app.query_one("#server-panel").border_title == f"The database: {expected}"


async def test_the_screen_says_it_runs_against_the_simulated_server(app: DemoApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.sub_title == "connected to the simulated server (in this process)"
