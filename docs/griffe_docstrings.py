"""A griffe extension: render optisync's docstrings well in mkdocs.

* The docstrings say ``:meth:`emit``` and ``:class:`~optisync.PushOutcome```
  because that reads well in ``help()``. mkdocstrings would print such roles
  as they are, so this rewrites each one as a Markdown cross-reference
  (``[`emit`][optisync.Store.emit]``) when it names something optisync
  renders, and as plain inline code otherwise (``RuntimeError``).
* Google style knows an ``Examples:`` section, whose doctests render as code;
  a singular ``Example:`` is read as an admonition, whose ``>>>`` lines
  Markdown turns into nested quotes. The heading is made plural.
* An attribute documented by ``#:`` comments just above it (the enum members
  of ``PushOutcome``) gets those comments as its docstring; griffe reads only
  string docstrings.

mkdocs.yml loads it through the ``extensions`` option of mkdocstrings' Python
handler; it is not a page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:meth|func|class|attr|exc|mod|obj|data):`(?P<body>[^`]+)`")
_EXAMPLE_HEADING = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
_EXPLICIT = re.compile(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>$")


def _public_paths(package: griffe.Module) -> dict[str, str]:
    """Map each canonical path re-exported at the top (optisync.store.Store) to optisync.Store."""
    paths: dict[str, str] = {}
    for name, member in package.members.items():
        if name.startswith("_"):
            continue
        try:
            paths[member.canonical_path] = f"{package.path}.{name}"
        except griffe.AliasResolutionError:
            continue
    return paths


def _publish(path: str, public: dict[str, str]) -> str:
    """Rewrite a canonical path to the path under which the API page renders it."""
    for canonical, published in public.items():
        if path == canonical or path.startswith(canonical + "."):
            return published + path[len(canonical) :]
    return path


def _resolve(scope: griffe.Object, name: str, package: str) -> str | None:
    if name.startswith(package + "."):
        return name
    try:
        return scope.resolve(name)
    except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
        return None


def _rewrite(text: str, obj: griffe.Object, package: str, public: dict[str, str]) -> str:
    scope: griffe.Object = obj if obj.is_class or obj.is_module else obj.parent or obj

    def replace(match: re.Match[str]) -> str:
        body = match["body"].strip()
        explicit = _EXPLICIT.match(body)
        if explicit:
            title, name = explicit["title"], explicit["target"]
        else:
            name = body.lstrip("~")
            title = name.rsplit(".", 1)[-1] if body.startswith("~") else name
        target = _resolve(scope, name, package)
        if target is None or not target.startswith(package + "."):
            return f"`{title}`"
        return f"[`{title}`][{_publish(target, public)}]"

    return _EXAMPLE_HEADING.sub(r"\g<indent>Examples:", _ROLE.sub(replace, text))


def _comment_docstring(obj: griffe.Object) -> griffe.Docstring | None:
    """The ``#:`` comment lines right above an attribute, as its docstring."""
    if not obj.is_attribute or obj.lineno is None or not isinstance(obj.filepath, Path):
        return None
    try:
        lines = obj.lines_collection[obj.filepath]  # a LinesCollection has no .get()
    except KeyError:
        return None
    comment: list[str] = []
    index = obj.lineno - 2  # the line above, 0-based
    while index >= 0 and lines[index].strip().startswith("#:"):
        comment.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    if not comment:
        return None
    return griffe.Docstring("\n".join(comment), lineno=index + 2, parent=obj)


class OptisyncDocstrings(griffe.Extension):
    """Rewrite the docstrings of the loaded package as described in the module docstring."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        public = _public_paths(pkg)
        for obj in _walk(pkg):
            if obj.docstring is None:
                obj.docstring = _comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, obj, pkg.path, public)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))  # type: ignore[arg-type]
    return found
