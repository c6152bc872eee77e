"""``optisync.server``: a server for ``optimistic_sync_with_push``, over WebSockets.

Install it with ``pip install "optisync[server]"`` (and ``optisync[postgres]``
for :class:`PostgresStorage`). Run it with one command::

    python -m optisync.server --database app.sqlite3 --port 8765

or embed :class:`SyncServer` in your own asyncio program.

Example:
    >>> import asyncio
    >>> from optisync.server import SqliteStorage, SyncServer
    >>> async def main() -> None:
    ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
    ...         print(url.startswith("ws://"))
    >>> asyncio.run(main())
    True
"""

from optisync.server.security import (
    Authenticator,
    AuthRefusedError,
    Grant,
    Handshake,
    HandshakeAuthenticator,
    allow_anyone,
    prefix_grant,
    read_prefixes,
    require_token,
)
from optisync.server.server import Limits, SyncServer
from optisync.server.storage import (
    Change,
    CompactingStorage,
    SqliteStorage,
    Storage,
    StorageUnavailableError,
)

__all__ = [
    "AuthRefusedError",
    "Authenticator",
    "Change",
    "CompactingStorage",
    "Grant",
    "Handshake",
    "HandshakeAuthenticator",
    "Limits",
    "SqliteStorage",
    "Storage",
    "StorageUnavailableError",
    "SyncServer",
    "allow_anyone",
    "prefix_grant",
    "read_prefixes",
    "require_token",
]
