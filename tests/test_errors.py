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


# --- the one error map -------------------------------------------------------------------------------

def test_http_status_uses_the_nearest_class_of_the_table():
    assert errors.http_status(errors.ValidationError([], "x")) == 422
    assert errors.http_status(errors.JoinTokenError("used")) == 403  # its own row, not CAError's 400
    assert errors.http_status(errors.CAError("x")) == 400
    assert errors.http_status(errors.ConflictError("cas lost")) == 409  # its row, not StoreError's 503
    assert errors.http_status(errors.StoreError("down")) == 503
    assert errors.http_status(errors.CanaryNotFound("none")) == 404
    assert errors.http_status(errors.OperatorAuthError("no token")) == 401
    assert errors.http_status(errors.BundleError("bad")) == 422
    assert errors.http_status(errors.ConfigError("bad flag")) == 400
    assert errors.http_status(errors.MeshError("?")) == 500
    assert errors.http_status(KeyError("a bug")) == 500
    assert errors.http_status(errors.HttpError(418, "teapot")) == 418


def test_every_request_error_class_has_its_own_row():
    """A new RequestError subclass must say its status in the table (or inherit one on purpose)."""
    direct = [c for c in vars(errors).values() if inspect.isclass(c) and c.__bases__ == (errors.RequestError,)]
    assert {c.__name__ for c in direct if c not in errors.HTTP_STATUS} == {"HttpError"}


def test_error_body_carries_details():
    exc = errors.ValidationError([errors.FieldError("a.yaml", 0, "spec.x", "unknown field")], "nothing applied")
    body = errors.error_body(exc)
    assert body["error"].startswith("nothing applied: 1 error(s)")
    assert body["errors"] == [{"source": "a.yaml", "document": 0, "path": "spec.x", "message": "unknown field"}]
    assert errors.error_body(errors.Forbidden("no", {"needed_role": "admin"})) == {"error": "no", "needed_role": "admin"}


def test_map_exceptions_translates_at_the_boundary():
    import pytest

    with pytest.raises(errors.BadRequest, match="ttl: bad") as info:
        with errors.map_exceptions({ValueError: errors.BadRequest}, prefix="ttl: "):
            raise ValueError("bad")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(errors.StoreError):  # a MeshError passes through untouched
        with errors.map_exceptions({Exception: errors.BadRequest}):
            raise errors.StoreError("down")
    with pytest.raises(KeyError):  # unmapped: unchanged
        with errors.map_exceptions({ValueError: errors.BadRequest}):
            raise KeyError("k")


def test_no_server_translates_a_status_by_hand():
    """Servers raise error classes; the table (errors.HTTP_STATUS) is the only place a status is chosen."""
    offenders = []
    for path in sorted((PACKAGE / "controlplane").glob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "HttpError(" in line and "class HttpError" not in line:
                offenders.append(f"{path.name}:{lineno}: {line.strip()}")
    assert offenders == []
