"""No two public classes of optisync share a name: a name means one thing everywhere."""

from __future__ import annotations

import importlib
import inspect

MODULES = (
    "optisync",
    "optisync.errors",
    "optisync.transport",
    "optisync.wire",
    "optisync.fields",
    "optisync.outbox",
    "optisync.persistence",
    "optisync.device",
    "optisync.client",
    "optisync.testing",
    "optisync.server",
    "optisync.server.protocol",
    "optisync.server.postgres",
)


def test_no_two_public_classes_share_a_name() -> None:
    seen: dict[str, tuple[type, str]] = {}
    clashes: list[str] = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isclass(obj):
                continue
            if name in seen and seen[name][0] is not obj:
                clashes.append(f"{name}: {seen[name][1]} and {module_name}")
            seen.setdefault(name, (obj, module_name))
    assert clashes == []
