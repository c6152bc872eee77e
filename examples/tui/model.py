"""The demo's state and store: one liked flag synced with ``optimistic_sync_with_push``.

Everything the screen shows about syncing comes from the store's public API
(:meth:`~optisync.Store.is_syncing`, :meth:`~optisync.Store.local_revision`,
:meth:`~optisync.Store.server_revision`) and from the state itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable

import attrs

from examples.tui.backend import Backend, RequestFailedError, ServerRecord
from optisync import PushMetadata, PushOutcome, Store

__all__ = ["KEY", "LikeState", "LikeStore", "SentRequest"]

KEY = "liked"
"""The one sync key of the demo."""


@attrs.frozen
class LikeState:
    """What the app holds: the liked flag and the server revision it came with.

    Example:
        >>> LikeState().liked, LikeState().server_revision
        (False, -1)
    """

    liked: bool = False
    server_revision: int = -1


@attrs.frozen
class SentRequest:
    """One request the store sent: the "Saving N..." line shows the last one.

    Example:
        >>> SentRequest(number=1, liked=True, local_revision=1)
        SentRequest(number=1, liked=True, local_revision=1)
    """

    number: int
    liked: bool
    local_revision: int


def _nothing(message: str) -> None:
    pass


class LikeStore(Store[LikeState]):
    """The seed's ItemCubit for one item, talking to a :class:`Backend`.

    Args:
        backend: the server.
        state: the state to start from (a restored one after a restart).
        device_id: this device's id (persisted across restarts).
        log: called with a line for every step worth showing.
        on_status: called when the sync status may have changed without a
            state change (a request sent or answered, a cycle finished).

    Example:
        >>> import asyncio
        >>> from examples.tui.simulated import SimulatedServer
        >>> async def main() -> None:
        ...     server = SimulatedServer(latency=0)
        ...     async with LikeStore(server, device_id=1) as store:
        ...         await store.toggle()
        ...         print(store.state, store.is_syncing(KEY), store.local_revision(KEY))
        >>> asyncio.run(main())
        LikeState(liked=True, server_revision=1) False 1
    """

    def __init__(
        self,
        backend: Backend,
        state: LikeState | None = None,
        *,
        device_id: int,
        log: Callable[[str], None] = _nothing,
        on_status: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(LikeState() if state is None else state, device_id=device_id)
        self.backend = backend
        self.log = log
        self.on_status = on_status
        self.requests_sent = 0
        self.last_request: SentRequest | None = None
        self.reloading = False

    def toggle(self) -> Awaitable[None]:
        """Flip the heart now; send it unless a request is already in flight."""
        return self.optimistic_sync_with_push(
            key=KEY,
            value_to_apply=lambda: not self.state.liked,
            apply_optimistic_value_to_state=lambda state, liked: attrs.evolve(state, liked=liked),
            get_value_from_state=lambda state: state.liked,
            get_server_revision_from_state=self._revision_in_state,
            send_value_to_server=self._send,
            apply_server_response_to_state=self._apply_response,
            on_finish=self._on_finish,
        )

    def apply_push(self, record: ServerRecord) -> PushOutcome:
        """Hand a pushed record to :meth:`~optisync.Store.server_push`."""
        if record.device_id is None:
            raise ValueError("a pushed record always has a writer")
        outcome = self.server_push(
            key=KEY,
            push_metadata=PushMetadata(
                server_revision=record.revision,
                local_revision=record.local_revision,
                device_id=record.device_id,
            ),
            get_server_revision_from_state=self._revision_in_state,
            apply_server_push_to_state=lambda state, key, revision: LikeState(
                liked=record.liked, server_revision=revision
            ),
        )
        self.log(
            f"push: revision {record.revision} liked={record.liked} "
            f"from device {record.device_id} -> {outcome.value}"
        )
        self.on_status()
        return outcome

    def known_server_revision(self) -> int:
        """The newest server revision known: the store's, or the state's."""
        return max(self.server_revision(KEY), self.state.server_revision)

    def on_error(self, error: BaseException) -> None:
        """Show unawaited sync errors in the log instead of on stderr."""
        self.log(f"error: {error}")

    def _revision_in_state(self, key: Hashable) -> int:
        return self.state.server_revision

    async def _send(
        self, liked: bool, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> ServerRecord:
        self.requests_sent += 1
        self.last_request = SentRequest(self.requests_sent, liked, local_revision)
        self.log(
            f"request {self.requests_sent}: set liked={liked} (local revision {local_revision})"
        )
        self.on_status()
        record = await self.backend.write(liked, local_revision=local_revision, device_id=device_id)
        inform(record.revision)
        self.log(f"response {self.last_request.number}: revision {record.revision}")
        self.on_status()
        return record

    def _apply_response(self, state: LikeState, record: ServerRecord) -> LikeState:
        self.log(f"stable: apply the response (revision {record.revision})")
        return LikeState(liked=record.liked, server_revision=record.revision)

    async def _on_finish(self, error: BaseException | None) -> LikeState | None:
        if error is None:
            self.on_status()
            return None
        self.log(f"request failed ({error}): reloading from the server")
        self.reloading = True
        self.on_status()
        try:
            record = await self.backend.read()
        except RequestFailedError as reload_error:
            self.log(f"reload failed: {reload_error}")
            return None
        finally:
            self.reloading = False
            self.on_status()
        if self.is_syncing(KEY) or record.revision < self.known_server_revision():
            self.log("reload ignored: a newer change arrived meanwhile")
            return None
        self.log(f"reloaded: liked={record.liked} (revision {record.revision})")
        return LikeState(liked=record.liked, server_revision=record.revision)
