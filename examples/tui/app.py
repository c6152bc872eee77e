"""The Textual app: this device's state on top, the server's database below.

Everything about syncing that the top half shows comes from the store's
public API (``is_syncing``, ``local_revision``, ``server_revision``) and its
state; the bottom half shows and drives the :class:`Backend`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.events import Click
from textual.widgets import Button, Footer, Header, Label, Log, OptionList, Static, Switch

from examples.tui.backend import Backend, RequestFailedError, ServerRecord
from examples.tui.model import KEY, LikeStore
from examples.tui.persistence import SavedApp, load_app, save_app
from examples.tui.use_cases import USE_CASES
from optisync.ui.textual import StoreWatcher

__all__ = ["LATENCY_STEPS", "DemoApp", "Heart"]

LATENCY_STEPS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

_HEART = (
    " ███   ███ ",
    "█████ █████",
    "███████████",
    " █████████ ",
    "   █████   ",
    "     █     ",
)
_FULL = "\n".join(_HEART)
_EMPTY = _FULL.replace("█", "░")


class Heart(Static):
    """The liked flag, drawn as a heart; a click taps it.

    Example:
        >>> Heart().liked
        False
    """

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(_EMPTY, id=id)
        self.liked = False

    def show(self, liked: bool) -> None:
        """Draw the heart full (liked) or empty."""
        self.liked = liked
        self.update(_FULL if liked else _EMPTY)
        self.set_class(liked, "liked")


class DemoApp(StoreWatcher, App[None]):
    """Try optimistic sync with push: tap, push, fail, restart.

    Args:
        backend: the server (the simulated one by default).
        state_file: where the app's state survives restarts.
        device_id: this device's id when no state file exists yet.

    Example:
        >>> from pathlib import Path
        >>> from examples.tui.simulated import SimulatedServer
        >>> app = DemoApp(SimulatedServer(), state_file=Path("unused.json"))
        >>> app.title
        'optisync: optimistic sync with push'
    """

    TITLE = "optisync: optimistic sync with push"
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "tap", "Tap", priority=True),
        Binding("t", "triple_tap", "3 taps", show=False),
        Binding("a", "other_device(True)", "Set liked"),
        Binding("n", "other_device(False)", "Set not liked"),
        Binding("p", "toggle_push", "Push on/off"),
        Binding("f", "fail_next", "Fail next"),
        Binding("plus,equals_sign", "latency(1)", "Latency +/-"),
        Binding("minus", "latency(-1)", "Latency -", show=False),
        Binding("r", "restart", "Restart"),
        Binding("q", "quit", "Quit"),
        *(Binding(str(n), f"use_case({n})", show=False) for n in range(1, len(USE_CASES) + 1)),
    ]

    def __init__(self, backend: Backend, *, state_file: Path, device_id: int | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.state_file = state_file
        self._first_device_id = device_id
        self._store: LikeStore | None = None
        self._stop_listening: list[Callable[[], None]] = []
        self._stop_store: list[Callable[[], None]] = []
        self.restarts = 0

    @property
    def store(self) -> LikeStore:
        """The store of the running app (a new one after each restart)."""
        if self._store is None:
            raise RuntimeError("the app is not running")
        return self._store

    # -- layout --------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            with Vertical(id="main"):
                with Vertical(id="app-panel", classes="panel"):
                    with Horizontal(id="heart-row"):
                        yield Heart(id="heart")
                        with Vertical(id="status"):
                            yield Label(id="liked-label")
                            yield Label(id="saving")
                            yield Label(id="local-revision")
                            yield Label(id="server-revision")
                    with Horizontal(classes="buttons"):
                        yield Button("Tap ♥ (space)", id="tap", variant="primary")
                        yield Button("3 taps (t)", id="triple-tap")
                        yield Button("Restart app (r)", id="restart")
                with Vertical(id="server-panel", classes="panel"):
                    yield Label(id="db-value")
                    yield Label(id="db-revision")
                    yield Label(id="db-writer")
                    with Horizontal(classes="row"):
                        yield Switch(value=True, id="push-switch", animate=False)
                        yield Label("push database changes (p)", classes="switch-label")
                    with Horizontal(classes="buttons"):
                        yield Button("Set liked (a)", id="set-liked")
                        yield Button("Set not liked (n)", id="set-not-liked")
                        yield Button("Next request fails (f)", id="fail-next", variant="error")
                    with Horizontal(classes="row"):
                        yield Label(id="latency")
                        yield Button("-", id="latency-down", classes="small")
                        yield Button("+", id="latency-up", classes="small")
                yield Log(id="log", max_lines=500)
            with Vertical(id="help", classes="panel"):
                yield OptionList(
                    *(f"{n}. {case.title}" for n, case in enumerate(USE_CASES, 1)),
                    id="use-cases",
                )
                yield Static(id="use-case-help")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#app-panel").border_title = "This app (the store)"
        self.query_one("#server-panel").border_title = "The server's database"
        self.query_one("#help").border_title = "Use cases: press 1-7"
        self.query_one("#log").border_title = "What happened"
        for widget in self.query("Button, Switch"):
            widget.can_focus = False  # keys go to the app's bindings, not to a focused widget
        try:
            await self.backend.start()
        except OSError as error:
            self.exit(return_code=1, message=f"Cannot reach the server: {error}")
            return
        self.sub_title = f"connected to the {self.backend.description}"
        self.query_one("#server-panel").border_title = f"The database: {self.backend.description}"
        on_database_change = self.while_mounted(self._on_database_change)
        self._stop_listening.append(self.backend.watch_database(on_database_change))
        self._open_store()
        self.query_one("#use-cases", OptionList).highlighted = 0
        self.refresh_view()

    async def on_unmount(self) -> None:
        await self._close_store()
        for stop in self._stop_listening:
            stop()
        self._stop_listening.clear()
        await self.backend.aclose()

    # -- the store's life ----------------------------------------------------

    def _open_store(self) -> None:
        saved = load_app(self.state_file)
        # The store's hooks can fire while the app shuts down: then they draw nothing.
        log, on_status = self.while_mounted(self.write_log), self.while_mounted(self.refresh_view)
        if saved is None:
            device_id = self._first_device_id or 1000 + secrets.randbelow(9000)
            store = LikeStore(self.backend, device_id=device_id, log=log, on_status=on_status)
        else:
            store = LikeStore(
                self.backend,
                saved.restored_state(),
                device_id=saved.device_id,
                log=log,
                on_status=on_status,
            )
            self.write_log(
                f"restored from {self.state_file.name}: liked={store.state.liked}, "
                f"server revision {store.state.server_revision}, device {store.device_id}"
            )
        self._store = store
        self.watch_store(store, self._on_state_change, init=False)
        self._stop_store = [self.backend.subscribe_pushes(self._on_push)]
        record = self.backend.database
        if self.backend.push_enabled and record.device_id is not None:
            # As a real server answers a new subscriber: its latest change, maybe stale.
            self.write_log("the server replays its latest change to the new store")
            self._on_push(record)

    async def _close_store(self) -> None:
        store = self._store
        if store is None:
            return
        for stop in self._stop_store:
            stop()
        self.save()
        await store.close()
        self._store = None

    def save(self) -> None:
        """Write the store's state, server revision and device id to the state file."""
        store = self.store
        save_app(
            self.state_file,
            SavedApp(
                device_id=store.device_id,
                state=store.state,
                server_revisions={KEY: store.known_server_revision()},
            ),
        )

    def _on_state_change(self, state: object) -> None:
        self.save()
        self.refresh_view()

    def _on_push(self, record: ServerRecord) -> None:
        store = self._store
        if store is None or store.is_closed:
            return
        try:
            store.apply_push(record)
        except Exception as error:  # keep the server's write going
            self.write_log(f"push failed: {error!r}")

    def _on_database_change(self, record: ServerRecord) -> None:
        self.refresh_view()

    # -- what the screen shows -----------------------------------------------

    def write_log(self, line: str) -> None:
        """Add a line to the event log at the bottom."""
        self.query_one("#log", Log).write_line(line)

    def refresh_view(self) -> None:
        """Show the store's and the server's current state."""
        store = self._store
        if store is not None:
            self._show_store(store)
        self._show_database()

    def _show_store(self, store: LikeStore) -> None:
        liked = store.state.liked
        self.query_one("#heart", Heart).show(liked)
        self._label("#liked-label", "Liked" if liked else "Not liked")
        if store.is_syncing(KEY):
            request = store.last_request
            saving = "Saving..." if request is None else f"Saving {request.number}..."
        elif store.reloading:
            saving = "Reloading from the server..."
        else:
            saving = "Idle: no request in flight"
        self._label("#saving", saving)
        self._label("#local-revision", f"local revision: {store.local_revision(KEY)}")
        self._label("#server-revision", f"server revision: {store.known_server_revision()}")
        self.query_one("#saving").set_class(store.is_syncing(KEY), "busy")

    def _show_database(self) -> None:
        backend = self.backend
        record = backend.database
        self._label("#db-value", f"value: {'♥ liked' if record.liked else '♡ not liked'}")
        self._label("#db-revision", f"revision: {record.revision}")
        self._label("#db-writer", f"last written by: {self._writer(record)}")
        self.query_one("#push-switch", Switch).value = backend.push_enabled
        self._label("#latency", f"latency: {backend.latency:g} s")
        fail = self.query_one("#fail-next", Button)
        fail.label = (
            "Next request fails: ARMED (f)"
            if backend.fail_next_request
            else ("Next request fails (f)")
        )

    def _writer(self, record: ServerRecord) -> str:
        if record.device_id is None:
            return "nobody yet"
        if record.device_id == 0:
            return "another device (the server names only a device's own writes)"
        if record.device_id == self.backend.other_device_id:
            return f"device {record.device_id} (the other device)"
        if self._store is not None and record.device_id == self._store.device_id:
            return f"device {record.device_id} (this app)"
        return f"device {record.device_id}"

    def _label(self, selector: str, text: str) -> None:
        self.query_one(selector, Label).update(text)

    # -- actions -------------------------------------------------------------

    def action_tap(self) -> None:
        """Tap the heart once."""
        self.store.toggle()

    def action_triple_tap(self) -> None:
        """Tap the heart three times in a row."""
        for _ in range(3):
            self.store.toggle()

    async def action_other_device(self, liked: bool) -> None:
        """Write the value as the other device."""
        try:
            record = await self.backend.write_as_other_device(liked)
        except RequestFailedError as error:
            self.write_log(f"device {self.backend.other_device_id} could not write: {error}")
            return
        self.write_log(f"device {record.device_id} wrote liked={liked}: revision {record.revision}")
        self.refresh_view()

    def action_toggle_push(self) -> None:
        """Switch the server's pushes on or off."""
        self.backend.push_enabled = not self.backend.push_enabled
        self.write_log(f"push database changes: {'on' if self.backend.push_enabled else 'off'}")
        self.refresh_view()

    def action_fail_next(self) -> None:
        """Make the app's next request fail (press again to undo)."""
        self.backend.fail_next_request = not self.backend.fail_next_request
        self.refresh_view()

    def action_latency(self, step: int) -> None:
        """Move the latency one step up or down."""
        current = self.backend.latency
        index = min(range(len(LATENCY_STEPS)), key=lambda i: abs(LATENCY_STEPS[i] - current))
        index = max(0, min(len(LATENCY_STEPS) - 1, index + step))
        self.backend.latency = LATENCY_STEPS[index]
        self.refresh_view()

    async def action_restart(self) -> None:
        """Close the store, save it, and start a new one from the file."""
        await self._close_store()
        self.restarts += 1
        self.write_log(f"restart {self.restarts}: the store was closed and saved")
        self._open_store()
        self.refresh_view()

    def action_use_case(self, number: int) -> None:
        """Show the help of use case ``number``."""
        self.query_one("#use-cases", OptionList).highlighted = number - 1

    # -- clicks --------------------------------------------------------------

    def on_click(self, event: Click) -> None:
        if event.widget is not None and event.widget.id == "heart":
            self.action_tap()

    @on(Button.Pressed)
    async def _button(self, event: Button.Pressed) -> None:
        actions: dict[str | None, str] = {
            "tap": "tap",
            "triple-tap": "triple_tap",
            "restart": "restart",
            "set-liked": "other_device(True)",
            "set-not-liked": "other_device(False)",
            "fail-next": "fail_next",
            "latency-down": "latency(-1)",
            "latency-up": "latency(1)",
        }
        await self.run_action(actions[event.button.id])

    @on(Switch.Changed, "#push-switch")
    def _push_switch(self, event: Switch.Changed) -> None:
        if event.value != self.backend.push_enabled:
            self.action_toggle_push()

    @on(OptionList.OptionHighlighted, "#use-cases")
    def _show_use_case(self, event: OptionList.OptionHighlighted) -> None:
        number = event.option_index + 1
        self.query_one("#use-case-help", Static).update(USE_CASES[number - 1].help_text(number))
