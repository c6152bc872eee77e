"""optisync.testing: a deterministic multi-device simulator for testing your stores.

A :class:`SimulatedServer` (last write wins, one increasing revision, every
commit pushed to every device), a seeded faulty :class:`SimulatedNetwork`
between it and your stores, one :class:`DeviceLink` per device to wire a
store's ``send_value_to_server`` and push handler, and virtual time
(:func:`run`, :class:`VirtualClockLoop`) so that thousands of scenarios run in
seconds and a seed replays exactly.

Example:
    >>> from optisync import testing
    >>> async def main() -> None:
    ...     server = testing.SimulatedServer()
    ...     network = testing.SimulatedNetwork(
    ...         server, faults=testing.NetworkFaults(request_latency=(0.1, 0.5)), seed=3)
    ...     link = network.device(1)
    ...     commit = await link.write("k", "v", local_revision=1)
    ...     print(commit.server_revision, server.value("k"))
    >>> testing.run(main())
    1 v
"""

from optisync.testing.clock import DeadlockError, VirtualClockLoop, run
from optisync.testing.network import (
    DeviceLink,
    NetworkFaults,
    SendValue,
    SettleTimeoutError,
    SimulatedNetwork,
    SimulatedRequestError,
    TraceEvent,
    UnknownDeviceError,
)
from optisync.testing.server import Commit, SimulatedServer

__all__ = [
    "Commit",
    "DeadlockError",
    "DeviceLink",
    "NetworkFaults",
    "SendValue",
    "SettleTimeoutError",
    "SimulatedNetwork",
    "SimulatedRequestError",
    "SimulatedServer",
    "TraceEvent",
    "UnknownDeviceError",
    "VirtualClockLoop",
    "run",
]
