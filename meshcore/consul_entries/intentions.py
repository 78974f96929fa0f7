"""``service-intentions`` -> AuthorizationPolicy (pure).

Consul evaluates, for a request to destination D, the sources of D's entry and of the ``*`` entry
together, ordered by precedence (exact over wildcard; the destination's exactness first: 9 for
exact -> exact down to 1 for ``*/*`` -> ``*/*``); the first source that matches the caller decides, and
is terminal: an L4 source by its ``Action``; an L7 source by its first matching ``Permission``, or by the
default (the ACL default policy) when none matches. A caller no source matches gets the default too.

meshcore evaluates like Istio (every DENY rule first, then, if any ALLOW policy selects the workload,
one ALLOW rule must match). The compiler turns Consul's ordered list into one policy per destination
that decides the same: with a default of ``allow`` a DENY policy holding exactly the requests Consul
denies; with ``deny`` an ALLOW policy holding exactly the ones it allows, plus one mesh-wide ALLOW policy
without rules (so a destination no intention names denies everything, as Consul's default deny).

* "first source wins": a source's rule excludes the callers of every higher-precedence source it
  overlaps (``notPrincipals``);
* "first permission wins": permission j applies only to requests no earlier permission with the other
  action matched; ``NOT(a AND b)`` is expanded into one rule per negated condition (``notPaths``,
  ``notMethods``, a header condition's ``notValues``).

Identities: a Consul intention names *services*; meshcore's SPIFFE IDs name the service account
(``spiffe://<td>/ns/<namespace>/sa/<service-account>``, the service name unless the instance's meta sets
``service-account``). Each source service is resolved to the principals of its instances in the catalog
(the service name in ``default`` when the catalog does not know it yet); a service account several
services share is reported, since the rule then covers them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..policies.authorization_policy.schema import API_VERSION, KIND_NAME, ROOT_NAMESPACE
from ._common import Out, Report, document, report_unknown, resource_name
from .model import CompileOptions, ConfigEntry

WILD = "*"
MAX_TERMS = 64
DEFAULT_DENY_NAME = "consul-intentions-default-deny"


def precedence(src_name: str, src_ns: str, dst_name: str, dst_ns: str) -> int:
    """Consul's intention precedence (9 = exact source to exact destination ... 1 = ``*/*`` to ``*/*``)."""
    dst = 0 if dst_ns == WILD else (1 if dst_name == WILD else 2)
    src = 0 if src_ns == WILD else (1 if src_name == WILD else 2)
    return 3 * dst + src + 1


@dataclass(frozen=True)
class _Source:
    entry: ConfigEntry
    index: int
    name: str
    namespace: str
    precedence: int
    raw: dict
    principals: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"Sources[{self.index}]"

    def covers(self, other: "_Source") -> bool:
        """Whether every caller of ``other`` is also a caller of this source (the same one, or a wildcard)."""
        if self.principals == (WILD,) or set(other.principals) <= set(self.principals):
            return True
        return self.name == WILD and other.namespace == self.namespace and other.name != WILD


# An atom is one condition of a permission: ("paths"|"methods", values) or ("header", name, values, inverted).
Atom = tuple


def _wildcard_value(entry: ConfigEntry, path: str, raw: dict, forms: tuple[tuple[str, str], ...],
                    report: Report) -> str | bool:
    """The first of ``forms`` set in ``raw`` as an Istio-style wildcard value ("" none set, False not expressible)."""
    for key, fmt in forms:
        value = raw.get(key)
        if value:
            if "*" in str(value):
                report.unsupported(entry, f"{path}.{key}", f"a literal '*' ({value!r}) cannot be expressed in an "
                                                           "AuthorizationPolicy; the permission is left out")
                return False
            return fmt.format(value)
    return ""


def _header_atom(entry: ConfigEntry, path: str, h: dict, report: Report) -> Atom | None:
    name = str(h.get("Name") or "").lower()
    if not name:
        report.unsupported(entry, f"{path}.Name", "a header match needs a Name")
        return None
    if h.get("Regex"):
        report.unsupported(entry, f"{path}.Regex", "AuthorizationPolicy matches header values exactly, by prefix or "
                                                   "by suffix, not by regular expression; the permission is left out")
        return None
    value = _wildcard_value(entry, path, h, (("Exact", "{}"), ("Prefix", "{}*"), ("Suffix", "*{}")), report)
    if value is False:
        return None
    if value:
        return ("header", name, (value,), bool(h.get("Invert")))
    if h.get("Present"):
        return ("header", name, ("*",), bool(h.get("Invert")))
    report.unsupported(entry, path, "a header match needs Present, Exact, Prefix, Suffix or Regex")
    return None


def _atoms(entry: ConfigEntry, path: str, http: dict, report: Report) -> list[Atom] | None:
    """The conditions of one permission's ``HTTP`` (ANDed), or None when one cannot be expressed."""
    report_unknown(entry, http, ("PathExact", "PathPrefix", "PathRegex", "Methods", "Header"), report, f"{path}.")
    atoms: list[Atom] = []
    if http.get("PathRegex"):
        report.unsupported(entry, f"{path}.PathRegex", "AuthorizationPolicy paths are exact, prefix ('/api/*') or "
                                                       "suffix matches, not regular expressions; the permission is "
                                                       "left out (a DENY left out allows what it denied: rewrite it "
                                                       "with PathPrefix or PathExact)")
        return None
    path_value = _wildcard_value(entry, path, http, (("PathExact", "{}"), ("PathPrefix", "{}*")), report)
    if path_value is False:
        return None
    if path_value:
        atoms.append(("paths", (path_value,)))
    methods = tuple(sorted({str(m).upper() for m in http.get("Methods") or ()}))
    if methods:
        atoms.append(("methods", methods))
    for i, h in enumerate(http.get("Header") or ()):
        atom = _header_atom(entry, f"{path}.Header[{i}]", h if isinstance(h, dict) else {}, report)
        if atom is None:
            return None
        atoms.append(atom)
    return atoms


def _negate(atom: Atom) -> Atom:
    if atom[0] == "header":
        return ("header", atom[1], atom[2], not atom[3])
    return ("not" + atom[0][0].upper() + atom[0][1:], atom[1])


def _term_rule(term: Sequence[Atom]) -> dict | None:
    """One conjunction of atoms -> an AuthorizationPolicy rule's ``to``/``when`` (None: unsatisfiable)."""
    op: dict[str, list[str]] = {}
    when: list[dict] = []
    methods: set[str] | None = None
    not_methods: set[str] = set()
    paths: list[str] = []
    for atom in term:
        kind = atom[0]
        if kind == "methods":
            methods = set(atom[1]) if methods is None else methods & set(atom[1])
        elif kind == "notMethods":
            not_methods |= set(atom[1])
        elif kind == "paths":
            paths.extend(atom[1])
        elif kind == "notPaths":
            op.setdefault("notPaths", []).extend(v for v in atom[1] if v not in op.get("notPaths", []))
        else:
            when.append({"key": f"request.headers[{atom[1]}]", ("notValues" if atom[3] else "values"): list(atom[2])})
    if len(paths) > 1:
        return None  # two positive paths: only from one permission, never happens (kept safe)
    if paths:
        if paths[0] in op.get("notPaths", ()):
            return None
        op["paths"] = paths
    if methods is not None:
        left = sorted(methods - not_methods)
        if not left:
            return None
        op["methods"] = left
    elif not_methods:
        op["notMethods"] = sorted(not_methods)
    rule: dict[str, Any] = {}
    if op:
        rule["to"] = [{"operation": op}]
    if when:
        rule["when"] = when
    return rule


def _terms(positive: list[Atom], negated: list[list[Atom]]) -> list[list[Atom]]:
    """DNF of ``AND(positive) AND NOT(n1) AND NOT(n2) ...`` (each NOT(n) is an OR of negated atoms)."""
    terms = [list(positive)]
    for n in negated:
        terms = [t + [_negate(a)] for t in terms for a in n]
        if len(terms) > MAX_TERMS:
            break
    return terms


def _principals(entry: ConfigEntry, name: str, ns: str | None, options: CompileOptions, report: Report,
                path: str) -> tuple[str, ...]:
    td = options.trust_domain
    if ns == WILD or (name == WILD and ns is None):
        return (WILD,)  # Consul without namespaces: "*" is every service, in whatever namespace meshcore puts it
    if name == WILD:
        return (f"{td}/ns/{ns}/sa/*",)
    known = [(n, sa) for n, sa in options.catalog.identities.get(name, ()) if ns is None or n == ns]
    if not known:
        known = [(ns or "default", name)]
    for n, sa in known:
        shared = sorted(s for s, ids in options.catalog.identities.items() if s != name and (n, sa) in ids)
        if shared:
            report.add(entry, path, "note", f"service {name!r} runs as service account {n}/{sa}, which "
                                            f"{', '.join(shared)} also use: meshcore's SPIFFE identities name the "
                                            "service account, so this source covers them too")
    return tuple(sorted(f"{td}/ns/{n}/sa/{sa}" for n, sa in known))


def _left_out(entry: ConfigEntry, raw: dict, path: str, report: Report) -> bool:
    """A source meshcore cannot match (a peer, another partition, a JWT source): reported, True."""
    for key in ("Peer", "SamenessGroup"):
        if raw.get(key):
            report.unsupported(entry, f"{path}.{key}", "cluster peering is not part of meshcore; no caller can "
                                                       "match this source, so it is left out")
            return True
    if (raw.get("Partition") or "default") != "default":
        report.unsupported(entry, f"{path}.Partition", "admin partitions are not part of meshcore; left out")
        return True
    if str(raw.get("Type") or "consul") != "consul":
        report.unsupported(entry, f"{path}.Type", "only Type \"consul\" sources are supported; left out")
        return True
    return False


def _sources(entry: ConfigEntry, options: CompileOptions, report: Report) -> list[_Source]:
    dst_ns = entry.get("Namespace") or "default"
    out = []
    for i, raw in enumerate(entry.get("Sources") or ()):
        path = f"Sources[{i}]"
        if not isinstance(raw, dict) or not raw.get("Name"):
            report.add(entry, path, "invalid", "a source needs a Name; left out")
            continue
        report_unknown(entry, raw, ("Name", "Namespace", "Partition", "Peer", "SamenessGroup", "Action",
                                    "Permissions", "Precedence", "Type",
                                    "Description", "LegacyID", "LegacyMeta", "LegacyCreateTime", "LegacyUpdateTime"),
                       report, f"{path}.")
        if _left_out(entry, raw, path, report):
            continue
        ns = raw.get("Namespace")
        out.append(_Source(entry=entry, index=i, name=str(raw["Name"]), namespace=ns or "default",
                           precedence=precedence(str(raw["Name"]), ns or "default", entry.name, dst_ns), raw=raw,
                           principals=_principals(entry, str(raw["Name"]), ns, options, report, path)))
    return out


def _source_rules(src: _Source, excluded: Sequence[str], wanted: str, report: Report) -> list[dict]:
    frm: dict[str, Any] = {"principals": list(src.principals)}
    if excluded:
        frm["notPrincipals"] = sorted(set(excluded))
    base = {"from": [{"source": frm}]}
    perms = src.raw.get("Permissions") or ()
    if not perms:
        return [dict(base)] if str(src.raw.get("Action") or "").lower() == wanted else []
    rules: list[dict] = []
    earlier_other: list[list[Atom]] = []  # atoms of earlier permissions with the other action
    for j, perm in enumerate(perms):
        path = f"{src.path}.Permissions[{j}]"
        if not isinstance(perm, dict):
            continue
        report_unknown(src.entry, perm, ("Action", "HTTP", "JWT"), report, f"{path}.")
        if perm.get("JWT"):
            report.unsupported(src.entry, f"{path}.JWT", "JWT requirements are not supported; the permission is left out")
            continue
        atoms = _atoms(src.entry, f"{path}.HTTP", perm.get("HTTP") or {}, report)
        if atoms is None:
            continue
        action = str(perm.get("Action") or "").lower()
        if action != wanted:
            earlier_other.append(atoms)
            continue
        terms = _terms(atoms, earlier_other)
        if len(terms) > MAX_TERMS:
            report.unsupported(src.entry, path, f"expressing this permission after the earlier ones takes more than "
                                                f"{MAX_TERMS} rules; it is left out: reorder or simplify the permissions")
            continue
        for term in terms:
            rule = _term_rule(term)
            if rule is not None:
                rules.append({**base, **rule})
    return rules


def _dest_namespaces(name: str, entry_ns: str | None, options: CompileOptions) -> list[str]:
    if entry_ns:
        return [entry_ns]
    found = sorted({ns for ns, _ in options.catalog.identities.get(name, ())})
    return found or ["default"]


def compile_intentions(entries: Iterable[ConfigEntry], options: CompileOptions, report: Report) -> list[Out]:
    by_dest: dict[str, ConfigEntry] = {}
    for e in entries:
        report_unknown(e, dict(e.body), ("Sources", "JWT"), report)
        if e.get("JWT"):
            report.unsupported(e, "JWT", "JWT requirements are not supported; the rest of the entry applies")
        if (e.get("Namespace") or "default") == WILD:
            report.unsupported(e, "Namespace", "a wildcard destination namespace is not supported; left out")
            continue
        by_dest[e.name] = e
    wildcard = by_dest.pop(WILD, None)
    wild_sources = _sources(wildcard, options, report) if wildcard else []
    wanted = "deny" if options.default_intention == "allow" else "allow"
    action = "DENY" if wanted == "deny" else "ALLOW"
    dests = sorted(set(by_dest) | (set(options.catalog.services) if wildcard else set()))
    if wildcard and not options.catalog.services:
        report.add(wildcard, "", "note", "an intention for destination '*' is compiled for each service of the "
                                         "catalog, and the catalog names none yet")
    out: list[Out] = []
    for dest in dests:
        entry = by_dest.get(dest)
        own = _sources(entry, options, report) if entry else []
        sources = sorted(own + wild_sources, key=lambda s: -s.precedence)
        rules: list[dict] = []
        for i, src in enumerate(sources):
            higher = [h for h in sources[:i] if h.precedence > src.precedence]
            if any(h.covers(src) for h in higher):
                continue  # every caller of src is decided by a higher-precedence source
            excluded = [p for h in higher if src.covers(h) for p in h.principals]
            rules.extend(_source_rules(src, excluded, wanted, report))
        refs = tuple(e.ref for e in (entry, wildcard) if e is not None)
        if not rules and action == "DENY":
            continue  # nothing denied: no policy needed
        for ns in _dest_namespaces(dest, entry.get("Namespace") if entry else None, options):
            spec = {"selector": {"matchLabels": {"app": dest}}, "action": action, "rules": rules}
            out.append(Out(document(API_VERSION, KIND_NAME, resource_name("consul-intentions", dest), ns, spec, refs),
                           "authz", dest, refs))
    if options.default_intention == "deny":
        out.append(Out(document(API_VERSION, KIND_NAME, DEFAULT_DENY_NAME, ROOT_NAMESPACE, {"action": "ALLOW"},
                                ("default-policy",)), "authz", "", ("default-policy",)))
    return out
