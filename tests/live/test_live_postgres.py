"""Scene 6: two server processes on one PostgreSQL database (skipped without a DSN)."""

from __future__ import annotations

import io
from pathlib import Path

from examples.live import two_servers


async def test_the_postgres_scene_pushes_a_write_on_one_server_to_the_other(
    postgres_dsn: str, tmp_path: Path
) -> None:
    out = io.StringIO()
    assert await two_servers.play(out, postgres_dsn, tmp_path)
    text = out.getvalue()
    table = text.split("Final state")[1]
    assert table.count("| equal") == 2
    assert '"purple" @ 1      | "purple" @ 1      | "purple" @ 1' in table
    # Device D, on the other process, got C's write as a push, and C got D's.
    lines = text.splitlines()
    d_got = [line for line in lines if '<- push color="purple" r1: applied' in line]
    c_got = [line for line in lines if "<- push like=true r2: applied" in line]
    assert len(d_got) == len(c_got) == 1


async def test_without_a_dsn_the_scene_is_skipped_with_its_reason() -> None:
    out = io.StringIO()
    assert await two_servers.play(out, None, None)
    assert out.getvalue().strip() == (
        f"== {two_servers.TITLE}: skipped "
        f"(no PostgreSQL: pass --postgres DSN or set ${two_servers.DSN_VARIABLE})"
    )
