"""optisync.testing.SimulatedServer: last write wins, one increasing revision, pushes to all."""

from __future__ import annotations

import pytest

from optisync import PushMetadata
from optisync.testing import Commit, SimulatedServer


def test_the_revision_increases_with_every_commit_whatever_the_key() -> None:
    server = SimulatedServer()
    revisions = [
        server.write(key, 0, local_revision=1, device_id=1).server_revision
        for key in ("a", "b", "a", "c")
    ]
    assert revisions == [1, 2, 3, 4]
    assert server.revision == 4


def test_the_last_write_of_a_key_wins() -> None:
    server = SimulatedServer()
    server.write("k", "first", local_revision=1, device_id=1)
    server.write("k", "second", local_revision=7, device_id=2)
    assert (server.value("k"), server.revision_of("k")) == ("second", 2)


def test_a_key_never_written_has_no_value_and_revision_minus_one() -> None:
    server = SimulatedServer()
    assert (server.value("k"), server.revision_of("k"), server.latest("k")) == (None, -1, None)


def test_every_commit_goes_to_every_subscriber_with_the_writers_metadata() -> None:
    server = SimulatedServer()
    first: list[Commit] = []
    second: list[Commit] = []
    server.subscribe(first.append)
    server.subscribe(second.append)
    server.write("k", "v", local_revision=4, device_id=9)
    assert first == second == [Commit("k", "v", 1, 4, 9)]
    assert first[0].push_metadata == PushMetadata(server_revision=1, local_revision=4, device_id=9)


def test_commits_after_a_revision_are_the_newer_ones_oldest_first() -> None:
    server = SimulatedServer()
    for value in range(5):
        server.write("k", value, local_revision=value, device_id=1)
    assert [c.server_revision for c in server.commits_after(3)] == [4, 5]
    assert [c.server_revision for c in server.commits_after(-1)] == [1, 2, 3, 4, 5]


def test_an_unhashable_key_is_refused_before_anything_changes() -> None:
    server = SimulatedServer()
    pushed: list[object] = []
    server.subscribe(pushed.append)
    with pytest.raises(TypeError):
        server.write(["a", "list"], 1, local_revision=1, device_id=1)  # type: ignore[arg-type]
    assert (server.revision, server.log, server.keys(), pushed) == (0, (), [], [])
