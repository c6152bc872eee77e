"""Row 5: one state change delivered to 1,000 subscribers, against reactivex.

Both sides call the same no-op listener 1,000 times per change: optisync's
``Store.emit`` against reactivex's ``BehaviorSubject.on_next`` (the usual
"current value plus changes" subject). Each change is a new int, so neither
side skips it as equal.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from optisync import Store

from ._common import Row, fmt_ns, fmt_ratio, median_ns_per_op, timed_ns

__all__ = ["EMITS", "REPEATS", "SUBSCRIBERS", "measure", "measure_ns", "reactivex_available"]

SUBSCRIBERS = 1_000
EMITS = 300
REPEATS = 9


def reactivex_available() -> bool:
    """Whether reactivex (the ``bench`` extra) is installed."""
    return importlib.util.find_spec("reactivex") is not None


def _listener(state: int) -> None:
    pass


def measure_ns(
    subscribers: int = SUBSCRIBERS, emits: int = EMITS, repeats: int = REPEATS
) -> tuple[float, float]:
    """Median ns per change delivered to every subscriber: (optisync, reactivex)."""
    from reactivex.subject import BehaviorSubject

    store = Store(0, device_id=1)
    subject: BehaviorSubject[int] = BehaviorSubject(0)
    for _ in range(subscribers):
        store.subscribe(_listener)
        subject.subscribe(on_next=_listener)
    counter = 0

    def run_store() -> None:
        nonlocal counter
        emit = store.emit
        for _ in range(emits):
            counter += 1
            emit(counter)

    def run_subject() -> None:
        nonlocal counter
        on_next: Any = subject.on_next
        for _ in range(emits):
            counter += 1
            on_next(counter)

    store_samples, subject_samples = [], []
    for _ in range(repeats):
        store_samples.append(timed_ns(run_store))
        subject_samples.append(timed_ns(run_subject))
    subject.dispose()
    return median_ns_per_op(store_samples, emits), median_ns_per_op(subject_samples, emits)


def measure(
    subscribers: int = SUBSCRIBERS, emits: int = EMITS, repeats: int = REPEATS
) -> list[Row]:
    """The fan-out row (or a row saying reactivex is missing)."""
    label = f"one emit to {subscribers:,} subscribers"
    if not reactivex_available():
        return [Row("5", label, "not available: reactivex missing", "", "", "<= 1.00x", None)]
    store_ns, subject_ns = measure_ns(subscribers, emits, repeats)
    ratio = store_ns / subject_ns
    return [
        Row(
            number="5",
            measure=label,
            optisync=fmt_ns(store_ns),
            baseline=f"{fmt_ns(subject_ns)} (BehaviorSubject)",
            ratio=fmt_ratio(ratio),
            target="<= 1.00x",
            met=ratio <= 1.0,
        )
    ]
