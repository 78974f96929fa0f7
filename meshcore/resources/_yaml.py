"""A safe YAML loader for resources: no duplicate keys, no anchors or aliases, bounded nesting.

* a key given twice in one mapping is an error (PyYAML silently keeps the last one);
* anchors (``&x``) and aliases (``*x``, also ``<<: *x`` merge keys) are refused: expanding them lets a
  2 KB document stand for millions of nodes (a "billion laughs"), and resources never need them;
* collections nest at most :data:`MAX_DEPTH` levels (the deepest resource schema nests about 12), so a
  deep document is refused at once instead of recursing through the composer and the validator.

Refusals are ``yaml.constructor.ConstructorError`` (a ``yaml.YAMLError`` with the line and column), as
PyYAML reports what it cannot construct.
"""

from __future__ import annotations

from typing import Any, Iterator

import yaml
from yaml.constructor import ConstructorError
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionStartEvent, Event
from yaml.nodes import MappingNode, Node

MAX_DEPTH = 64


def _refused(problem: str, event: Event) -> ConstructorError:
    """Valid YAML that meshcore does not load (an anchor or alias, too deep a nesting)."""
    mark = event.start_mark
    return ConstructorError(None, None, problem, mark if isinstance(mark, Mark) else None)


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus an error on a key given twice in one mapping, on anchors and aliases, and on
    nesting deeper than :data:`MAX_DEPTH`."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise _refused(f"found alias *{event.anchor}; meshcore does not expand YAML aliases, write the value out",
                           event)
        if event.anchor is not None:
            raise _refused(f"found anchor &{event.anchor}; meshcore does not accept YAML anchors and aliases, "
                           "write the value out", event)
        if not isinstance(event, CollectionStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _refused(f"the document nests deeper than {MAX_DEPTH} levels", event)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except Exception:  # unhashable keys: let PyYAML report them in its own words
                continue
            if key in seen:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first given at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def iter_documents(text: str) -> Iterator[Any]:
    """Yield each document of a (multi-document) YAML text; raises ``yaml.YAMLError`` where it breaks."""
    loader = StrictSafeLoader(text)
    try:
        while loader.check_data():
            yield loader.get_data()
    finally:
        loader.dispose()


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """``YAML syntax error at line L, column C: <problem>`` (1-based, as editors count).

    Duplicate keys and bad tags (constructor errors) say ``YAML error`` instead.
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{problem} ({context})" if context and context not in problem else problem
    what = "YAML error" if isinstance(exc, ConstructorError) else "YAML syntax error"
    if mark is not None:
        return f"{what} at line {mark.line + 1}, column {mark.column + 1}: {text}"
    return f"{what}: {text}"
