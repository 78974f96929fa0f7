"""The one exception tree: every exception class meshcore defines lives in ``meshcore/errors.py`` under MeshError."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import meshcore
from meshcore import errors

PACKAGE = Path(meshcore.__file__).parent
_EXCEPTION_BASES = {"Exception", "BaseException", "ValueError", "RuntimeError", "KeyError", "OSError", "LookupError"}


def _raises_like_an_exception(node: ast.ClassDef, known: set[str]) -> bool:
    for base in node.bases:
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
        if name in _EXCEPTION_BASES or name in known or name.endswith(("Error", "Exception")):
            return True
    return False


def test_no_exception_class_is_defined_outside_errors_py():
    known = {name for name, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, BaseException)}
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and _raises_like_an_exception(node, known):
                strays.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert not strays, "define these in meshcore/errors.py (under MeshError) and import them:\n" + "\n".join(strays)


def test_every_exception_in_errors_py_derives_from_mesh_error():
    classes = [obj for obj in vars(errors).values()
               if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__]
    assert len(classes) > 30
    assert [c.__name__ for c in classes if not issubclass(c, errors.MeshError)] == []


def test_moved_classes_are_still_importable_where_they_were():
    from meshcore.agent.client import AgentRequestError
    from meshcore.federation import BundleError
    from meshcore.fleet import InventoryError, RemoteError

    assert AgentRequestError is errors.AgentRequestError and BundleError is errors.BundleError
    assert InventoryError is errors.InventoryError and RemoteError is errors.RemoteError
    assert issubclass(errors.ValueProblem, ValueError)  # deploy's callers that catch ValueError still do
