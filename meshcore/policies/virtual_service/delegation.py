"""VirtualService delegation, Istio's ``http[].delegate`` (pure).

A root VirtualService (one with ``hosts``) hands an http rule over to a delegate (one without ``hosts``, named by
``delegate: {name, namespace}``; the namespace defaults to the root's): the rule stands for the delegate's http rules,
in their order, each merged with it as Istio merges them (``mergeHTTPRoute``):

* matches: every match alternative of the delegate rule must fit inside one of the root rule's (a ``uri`` prefix
  under the root's prefix, the same exact value, headers and query parameters that do not contradict, the same
  ``ignoreUriCase``, a port, ``sourceNamespace``, ``sourceLabels`` and ``gateways`` within the root's): it becomes one
  alternative per root alternative it fits, with the root's conditions filled in where it sets none. A delegate rule
  with an alternative that fits no root alternative is left out (Istio logs the conflict and drops the route).
  Either side without ``match`` takes the other's.
* names: ``<root name>-<delegate name>`` when both are named, else whichever is;
* what the delegate rule leaves unset it inherits from the root rule: rewrite, timeout, retries, fault, mirrors,
  corsPolicy, headers.

Istio delegates one level; meshcore lets a delegate delegate further (a chain), and refuses cycles. A missing delegate,
one with ``hosts`` or a cycle is refused by :func:`delegate_errors` at apply time and, should the stored set still
hold one, refuses the proxy's config at build time (:class:`~meshcore.errors.RouteProblem`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from ...errors import FieldError, RouteProblem
from ...resources.model import Resource
from .spec import EXACT, PREFIX, REGEX, HeaderOperations, HttpRoute, Match, StringMatch, spec_of

KIND_NAME = "VirtualService"
Key = tuple[str, str]


@dataclass(frozen=True)
class ResolvedRule:
    """An http rule as the routes are built from it: ``rule`` (merged with the roots above it) written as
    ``http[index]`` of ``vs`` (the root itself, or the delegate that holds it)."""

    vs: Resource
    index: int
    rule: HttpRoute


def _index(services: Iterable[Resource]) -> dict[Key, Resource]:
    return {(r.namespace, r.name): r for r in services if r.kind == KIND_NAME}


def _chain(stack: Sequence[Key], last: Key) -> str:
    return " -> ".join(f"{ns}/{name}" for ns, name in (*stack, last))


def http_rules(vs: Resource, services: Iterable[Resource]) -> list[ResolvedRule]:
    """``vs``'s http rules with every delegating rule replaced by its delegate's rules, merged (see the module
    docstring). ``services``: the VirtualServices to find delegates among. Raises :class:`RouteProblem` for a
    missing delegate, one with hosts, or a cycle."""
    if not any(rule.delegate is not None for rule in spec_of(vs).http):
        return [ResolvedRule(vs, i, rule) for i, rule in enumerate(spec_of(vs).http)]
    return _expand(vs, _index(services), ())


def _expand(vs: Resource, index: dict[Key, Resource], stack: tuple[Key, ...]) -> list[ResolvedRule]:
    key = (vs.namespace, vs.name)
    out: list[ResolvedRule] = []
    for i, rule in enumerate(spec_of(vs).http):
        if rule.delegate is None:
            out.append(ResolvedRule(vs, i, rule))
            continue
        target_key = rule.delegate.key(vs.namespace)
        where = f"VirtualService {vs.namespace}/{vs.name} http[{i}].delegate"
        problem = _target_problem(index.get(target_key), target_key, (*stack, key))
        if problem:
            raise RouteProblem(f"{where}: {problem}")
        for sub in _expand(index[target_key], index, (*stack, key)):
            merged = merge_rule(rule, sub.rule)
            if merged is not None:
                out.append(ResolvedRule(sub.vs, sub.index, merged))
    return out


def _target_problem(target: Resource | None, key: Key, stack: Sequence[Key]) -> str | None:
    ns, name = key
    if target is None:
        return (f"no VirtualService {ns}/{name}; apply the delegate (a VirtualService without hosts in namespace "
                f"{ns}) or name an existing one")
    if not spec_of(target).is_delegate:
        return (f"VirtualService {ns}/{name} has hosts, so it routes on its own and cannot be a delegate; "
                "delegate to a VirtualService without hosts")
    if key in stack:
        return f"delegation cycle {_chain(stack, key)}; a delegate must not lead back to a VirtualService above it"
    return None


def delegate_errors(resources: Sequence[Resource]) -> list[FieldError]:
    """Cross-resource checks of ``http[].delegate`` over the set stored together: every delegate exists, has no
    hosts, and no chain of delegates leads back to where it started."""
    index = _index(resources)
    errors: list[FieldError] = []
    for key in sorted(index):
        vs = index[key]
        for i, rule in enumerate(spec_of(vs).http):
            if rule.delegate is None:
                continue
            target_key = rule.delegate.key(vs.namespace)
            problem = _target_problem(index.get(target_key), target_key, ())
            if problem is None:
                problem = _cycle_from(target_key, key, index)
            if problem:
                errors.append(FieldError(str(vs.key), None, f"spec.http[{i}].delegate", problem))
    return errors


def _cycle_from(start: Key, home: Key, index: dict[Key, Resource]) -> str | None:
    """Whether following delegates from ``start`` reaches ``home`` (then: the cycle, spelled out)."""
    seen: set[Key] = set()
    todo: list[tuple[Key, tuple[Key, ...]]] = [(start, (home,))]
    while todo:
        key, path = todo.pop()
        if key == home:
            return f"delegation cycle {_chain(path, home)}; a delegate must not lead back to a VirtualService above it"
        if key in seen or key not in index:
            continue
        seen.add(key)
        for rule in spec_of(index[key]).http:
            if rule.delegate is not None:
                todo.append((rule.delegate.key(key[0]), (*path, key)))
    return None


def dropped_rules(resources: Sequence[Resource]) -> list[tuple[Resource, int, Resource, int]]:
    """Delegate rules that fit under no root rule delegating to them (their matches conflict, so Istio, and meshcore,
    leave them out): ``(delegate, its rule index, root, the root's rule index)``, for a rule dropped under every root
    rule naming its VirtualService. Pure; for ``meshctl analyze``."""
    index = _index(resources)
    roots: dict[Key, list[tuple[Resource, int, HttpRoute]]] = {}
    for key in sorted(index):
        for i, rule in enumerate(spec_of(index[key]).http):
            if rule.delegate is not None:
                roots.setdefault(rule.delegate.key(key[0]), []).append((index[key], i, rule))
    out = []
    for key, under in sorted(roots.items()):
        target = index.get(key)
        if target is None or not spec_of(target).is_delegate:
            continue  # refused by delegate_errors
        for j, leaf in enumerate(spec_of(target).http):
            if all(merge_matches(rule.match, leaf.match) is None for _, _, rule in under):
                root, i, _ = under[0]
                out.append((target, j, root, i))
    return out


# --- merging (Istio's mergeHTTPRoute / mergeHTTPMatchRequests) --------------------------------------------


def _get(m: StringMatch | None, kind: str) -> str:
    return m.value if m is not None and m.kind == kind else ""


def _string_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    """Istio's stringMatchConflict: the leaf's condition cannot hold inside the root's."""
    if root is None or leaf is None:
        return False
    if _get(root, REGEX) and (_get(leaf, REGEX) or _get(leaf, PREFIX) or _get(leaf, EXACT)):
        return True
    if _get(leaf, REGEX) and (_get(root, REGEX) or _get(root, PREFIX) or _get(root, EXACT)):
        return True
    exact = _get(root, EXACT)
    if exact and (_get(leaf, PREFIX) or _get(leaf, EXACT) != exact):
        return True
    prefix = _get(root, PREFIX)
    if prefix:
        if _get(leaf, PREFIX) and not _get(leaf, PREFIX).startswith(prefix):
            return True
        if _get(leaf, EXACT) and not _get(leaf, EXACT).startswith(prefix):
            return True
    return False


def _conflict(root: Match, leaf: Match) -> bool:
    """Istio's hasConflict: ``leaf`` does not fit inside ``root``."""
    for attr in ("uri", "scheme", "method", "authority"):
        if _string_conflict(getattr(root, attr), getattr(leaf, attr)):
            return True
    for attr in ("headers", "without_headers", "query_params"):
        roots = dict(getattr(root, attr))
        if any(_string_conflict(roots.get(name), m) for name, m in getattr(leaf, attr)):
            return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port is not None and leaf.port is not None and root.port != leaf.port:
        return True
    if root.source_namespace is not None and leaf.source_namespace != root.source_namespace:
        return True
    leaf_labels = dict(leaf.source_labels)
    if any(leaf_labels.get(k) != v for k, v in root.source_labels):
        return True
    if root.gateways and leaf.gateways and not set(leaf.gateways) <= set(root.gateways):
        return True
    return False


def _joined(root: str | None, leaf: str | None) -> str | None:
    if not leaf:
        return root
    return f"{root}-{leaf}" if root else leaf


def _merged_map(root: tuple, leaf: tuple) -> tuple:
    merged = dict(root)
    merged.update(dict(leaf))
    return tuple(sorted(merged.items()))


def merge_match(root: Match, leaf: Match) -> Match:
    """``leaf`` with ``root``'s conditions where it sets none (Istio's mergeHTTPMatchRequest)."""
    return replace(
        leaf,
        name=_joined(root.name, leaf.name),
        uri=leaf.uri or root.uri,
        scheme=leaf.scheme or root.scheme,
        method=leaf.method or root.method,
        authority=leaf.authority or root.authority,
        headers=_merged_map(root.headers, leaf.headers),
        without_headers=_merged_map(root.without_headers, leaf.without_headers),
        query_params=_merged_map(root.query_params, leaf.query_params),
        port=leaf.port if leaf.port is not None else root.port,
        source_labels=_merged_map(root.source_labels, leaf.source_labels),
        source_namespace=leaf.source_namespace if leaf.source_namespace is not None else root.source_namespace,
        gateways=leaf.gateways or root.gateways,
        stat_prefix=leaf.stat_prefix or root.stat_prefix,
    )


def merge_matches(root: tuple[Match, ...], leaf: tuple[Match, ...]) -> tuple[Match, ...] | None:
    """The merged alternatives, or None when some leaf alternative fits no root alternative (a conflict)."""
    if not root:
        return leaf
    if not leaf:
        return root
    out: list[Match] = []
    for sub in leaf:
        fits = [merge_match(r, sub) for r in root if not _conflict(r, sub)]
        if not fits:
            return None
        out.extend(fits)
    return tuple(out)


_NO_HEADERS = HeaderOperations()


def merge_rule(root: HttpRoute, leaf: HttpRoute) -> HttpRoute | None:
    """The delegate rule ``leaf`` as it applies under the root rule ``root`` (None: their matches conflict)."""
    matches = merge_matches(root.match, leaf.match)
    if matches is None:
        return None
    own_headers = leaf.request_headers != _NO_HEADERS or leaf.response_headers != _NO_HEADERS
    return replace(
        leaf,
        match=matches,
        name=_joined(root.name, leaf.name),
        rewrite=leaf.rewrite or root.rewrite,
        timeout=leaf.timeout if leaf.timeout is not None else root.timeout,
        retries=leaf.retries or root.retries,
        fault=leaf.fault or root.fault,
        mirrors=leaf.mirrors or root.mirrors,
        mirror=leaf.mirror or root.mirror,
        mirror_percentage=leaf.mirror_percentage if leaf.mirrors else root.mirror_percentage,
        cors=leaf.cors or root.cors,
        request_headers=leaf.request_headers if own_headers else root.request_headers,
        response_headers=leaf.response_headers if own_headers else root.response_headers,
    )


__all__ = ["ResolvedRule", "http_rules", "delegate_errors", "dropped_rules", "merge_rule", "merge_match",
           "merge_matches"]
