"""Prometheus metrics for :class:`~optisync.server.SyncServer`: ``pip install "optisync[metrics]"``.

Pass a :class:`ServerMetrics` as ``SyncServer(..., metrics=...)``; a server
without one imports nothing from ``prometheus_client`` and does no metrics
work. Expose the registry with ``python -m optisync.server --metrics-port``,
prometheus-client's ``start_http_server``, or :meth:`ServerMetrics.asgi_app`
mounted in a Starlette or FastAPI app (docs/server.md, "Metrics").

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> from optisync.server.metrics import ServerMetrics
    >>> registry = CollectorRegistry()
    >>> metrics = ServerMetrics(registry)
    >>> metrics.frame_refused("rate_limited")
    >>> registry.get_sample_value("optisync_frames_refused_total", {"reason": "rate_limited"})
    1.0
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, cast

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client import make_asgi_app as _make_asgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float

__all__ = ["ServerMetrics"]

# A SQLite commit takes a fraction of a millisecond to a few; a slow disk or a
# remote PostgreSQL, tens. The buckets resolve both ends.
_COMMIT_BUCKETS: Final = (
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
# Handing one change to every reader costs microseconds a reader.
_FAN_OUT_BUCKETS: Final = (
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
)  # fmt: skip
# Shown at 0 from the start, so that a rate over them exists before the first one.
_FRAME_REASONS: Final = (
    "rate_limited", "bad_json", "bad_field", "bad_message", "missing_field", "unknown_field",
    "unknown_type", "too_large", "forbidden", "unavailable",
)  # fmt: skip
_REFUSAL_REASONS: Final = (
    "too_many_connections", "no_hello", "rate_limited", "bad_message", "bad_json", "bad_field",
    "too_large", "bad_version", "unauthorized", "device_in_use", "device_unproven",
    "unavailable",
)  # fmt: skip
_CLOSE_REASONS: Final = ("disconnected", "bad_frames", "send_queue_full", "unavailable")
# How prometheus-client writes a bucket's bound ("+Inf", "2e-05", "0.001").
_go_float: Final = cast(Callable[[float], str], _untyped_go_float)


class ServerMetrics:
    """The Prometheus metrics of one :class:`~optisync.server.SyncServer`.

    Give it to one server: ``SyncServer(storage, metrics=ServerMetrics())``.
    The server calls its methods where things happen; an app never needs to.

    Args:
        registry: where the metrics are registered; default prometheus-client's
            global ``REGISTRY`` (what ``start_http_server`` and
            ``make_asgi_app`` serve by default). A registry holds one set of
            these names: give each further server a registry of its own, or
            another ``namespace``.
        namespace: the prefix of every metric name.

    Attributes:
        registry: the registry the metrics are in: what to serve.
        namespace: the prefix of every metric name.

    The metrics (``optisync_`` being the namespace):

    * ``optisync_connections_open``: devices connected, past their hello.
    * ``optisync_connections_accepted_total``: hellos accepted.
    * ``optisync_connections_refused_total{reason}``: connections closed before
      or at their hello, by the error code sent (``unauthorized``,
      ``device_in_use``, ...), or ``too_many_connections`` and ``no_hello``.
    * ``optisync_connections_closed_total{reason}``: accepted connections gone:
      ``disconnected`` (the device closed, the network failed, the server
      stopped, a frame over ``max_frame_bytes``), ``bad_frames``,
      ``send_queue_full``, ``unavailable`` (a replay's storage read failed).
    * ``optisync_frames_refused_total{reason}``: messages answered with an
      ``error``, by its code (``rate_limited``, ``bad_json``, ``too_large``,
      ``bad_message``, ``bad_field``, ``missing_field``, ``unknown_field``,
      ``unknown_type``, ``forbidden``, ``unavailable``).
    * ``optisync_commits_total`` and the histogram
      ``optisync_commit_latency_seconds``: sets acknowledged with a commit,
      and the time from the server taking the set up (decoded, in its
      connection's turn) to its storage returning the durable commit (group
      commit wait included).
    * ``optisync_fan_out_seconds``: for each change the storage hands over,
      the time from that hand-over (right after the commit) until its push
      frame was written to, or queued for, every connected device allowed to
      read it. A queued frame is counted as handed over: its later write to
      a slow device is not in it.
    * ``optisync_replays_total``, ``optisync_replayed_keys_total``,
      ``optisync_replayed_bytes_total``: replays started after a hello, and
      the push frames (keys) and their bytes queued by them.

    Example:
        >>> import asyncio
        >>> from prometheus_client import CollectorRegistry
        >>> from optisync.server import SqliteStorage, SyncServer
        >>> from optisync.server.metrics import ServerMetrics
        >>> registry = CollectorRegistry()
        >>> server = SyncServer(SqliteStorage(":memory:"), metrics=ServerMetrics(registry))
        >>> async def main() -> None:
        ...     async with server.run(port=0):
        ...         pass
        >>> asyncio.run(main())
        >>> registry.get_sample_value("optisync_connections_open")
        0.0
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "optisync"
    ) -> None:
        self.registry: Final = REGISTRY if registry is None else registry
        self.namespace: Final = namespace
        made: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self._open = Gauge("connections_open", "Devices connected, past their hello.", **made)
        self._accepted = Counter("connections_accepted", "Hellos accepted.", **made)
        self._refused = _ByReason(
            "connections_refused",
            "Connections closed before or at their hello, by reason.",
            _REFUSAL_REASONS,
            made,
        )
        self._closed = _ByReason(
            "connections_closed", "Accepted connections gone, by reason.", _CLOSE_REASONS, made
        )
        self._frames_refused = _ByReason(
            "frames_refused", "Messages answered with an error, by its code.", _FRAME_REASONS, made
        )
        # Observed once or twice a commit: plain numbers, read at scrape time.
        self._commit_latency = _Timings(_COMMIT_BUCKETS)
        self._fan_out = _Timings(_FAN_OUT_BUCKETS)
        self.registry.register(_PerCommit(namespace, self._commit_latency, self._fan_out))
        self._replays = Counter("replays", "Replays started after a hello.", **made)
        self._replayed_keys = Counter("replayed_keys", "Push frames queued by replays.", **made)
        self._replayed_bytes = Counter("replayed_bytes", "Bytes queued by replays.", **made)

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app serving this registry in Prometheus' text format, to mount at ``/metrics``.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from starlette.applications import Starlette
            >>> from starlette.routing import Mount
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> app = Starlette(routes=[Mount("/metrics", app=metrics.asgi_app())])
        """
        app: Callable[..., Any] = _make_asgi_app(self.registry)
        return app

    # -- what the server reports -------------------------------------------------------

    def connection_accepted(self) -> None:
        """A hello was accepted: one more open connection.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> metrics.connection_accepted()
            >>> metrics.registry.get_sample_value("optisync_connections_open")
            1.0
        """
        self._accepted.inc()
        self._open.inc()

    def connection_refused(self, reason: str) -> None:
        """A connection was closed before or at its hello, for ``reason``.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> metrics.connection_refused("unauthorized")
            >>> metrics.registry.get_sample_value(
            ...     "optisync_connections_refused_total", {"reason": "unauthorized"}
            ... )
            1.0
        """
        self._refused.inc(reason)

    def connection_closed(self, reason: str) -> None:
        """An accepted connection is gone, for ``reason``: one fewer open connection.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> metrics.connection_accepted()
            >>> metrics.connection_closed("disconnected")
            >>> metrics.registry.get_sample_value("optisync_connections_open")
            0.0
        """
        self._closed.inc(reason)
        self._open.dec()

    def frame_refused(self, reason: str) -> None:
        """A message was answered with an error whose code is ``reason``.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> metrics.frame_refused("bad_json")
            >>> metrics.registry.get_sample_value(
            ...     "optisync_frames_refused_total", {"reason": "bad_json"}
            ... )
            1.0
        """
        self._frames_refused.inc(reason)

    def committed(self, seconds: float) -> None:
        """A set was acknowledged with a commit, ``seconds`` after the server took it up.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> metrics.committed(0.002)
            >>> metrics.registry.get_sample_value("optisync_commit_latency_seconds_count")
            1.0
        """
        self._commit_latency.observe(seconds)

    def fanned_out(self, seconds: float) -> None:
        """A change's pushes were written or queued for every reader, ``seconds`` after its commit.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> metrics.fanned_out(0.0001)
            >>> metrics.registry.get_sample_value("optisync_fan_out_seconds_count")
            1.0
        """
        self._fan_out.observe(seconds)

    def replay_started(self) -> None:
        """A device's replay began.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> metrics.replay_started()
            >>> metrics.registry.get_sample_value("optisync_replays_total")
            1.0
        """
        self._replays.inc()

    def replayed(self, keys: int, size: int) -> None:
        """A replay queued ``keys`` push frames of ``size`` bytes in all.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> from optisync.server.metrics import ServerMetrics
            >>> metrics = ServerMetrics(CollectorRegistry())
            >>> metrics.replayed(2, 150)
            >>> metrics.registry.get_sample_value("optisync_replayed_bytes_total")
            150.0
        """
        self._replayed_keys.inc(keys)
        self._replayed_bytes.inc(size)


class _ByReason:
    """A counter by ``reason``, each of ``reasons`` shown at 0 from the start.

    Each reason's child is kept: ``labels()`` costs more than the increment,
    and a flood of refused frames counts one per frame.
    """

    def __init__(
        self, name: str, documentation: str, reasons: Sequence[str], made: dict[str, Any]
    ) -> None:
        self._counter = Counter(name, documentation, ["reason"], **made)
        self._children = {reason: self._counter.labels(reason) for reason in reasons}

    def inc(self, reason: str) -> None:
        child = self._children.get(reason)
        if child is None:
            child = self._children[reason] = self._counter.labels(reason)
        child.inc()


class _Timings:
    """A histogram kept as plain numbers: an observation is a bisect and two additions.

    prometheus-client's ``Histogram`` takes a lock per call, several times the
    cost; these are written by the event loop's thread only and read at
    scrape time (a scrape may see an observation's bucket without its sum).
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def family(self, name: str, documentation: str) -> tuple[HistogramMetricFamily, int]:
        """The histogram as Prometheus shows it, and its count of observations."""
        counts, total = list(self.counts), self.sum  # one copy: buckets and count agree
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append((_go_float(bound), float(cumulative)))
        family = HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)
        return family, cumulative


class _PerCommit(Collector):
    """The metrics observed at each commit, built from :class:`_Timings` at scrape time."""

    def __init__(self, namespace: str, commit: _Timings, fan_out: _Timings) -> None:
        self._prefix = f"{namespace}_" if namespace else ""
        self._commit = commit
        self._fan_out = fan_out

    def collect(self) -> Iterator[Metric]:
        latency, count = self._commit.family(
            f"{self._prefix}commit_latency_seconds",
            "From the server taking a set up to its storage returning the durable commit.",
        )
        yield CounterMetricFamily(
            f"{self._prefix}commits", "Sets acknowledged with a commit.", value=float(count)
        )
        yield latency
        fan_out, _ = self._fan_out.family(
            f"{self._prefix}fan_out_seconds",
            "From a commit handed over by the storage to its push written to, "
            "or queued for, every connected reader.",
        )
        yield fan_out

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # the names, for the registry's check against duplicates
