"""The client stands alone: importing it loads neither the server nor a database."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_SIDE = ("optisync.server", "sqlite3", "websockets.asyncio.server", "optisync.persistence")


def test_importing_the_client_loads_no_server_and_no_database() -> None:
    program = (
        "import json, sys\n"
        "import optisync.client\n"
        f"print(json.dumps([name for name in {SERVER_SIDE!r} if name in sys.modules]))\n"
    )
    # python -c puts the current directory (this worktree) first on sys.path.
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
