"""A safe YAML loader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""

from __future__ import annotations

from typing import Any, Iterator

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus an error on a key given twice in one mapping."""

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
