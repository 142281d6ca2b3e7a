"""Who may call what: every route of the app and the roles that may use it, in one table.

Roles (:data:`keel.control.keys.ROLES`): ``admin`` may do everything; ``app`` calls
features; ``reviewer`` works the review queue; ``viewer`` reads. A key limited to some
features is refused (403 ``permission_denied``) a call or a read about any other, and
reads that span every feature. How a rule finds the feature a request is about:

=========  =================================================================================
path       a path parameter (``/v1/features/{name}``)
query      the ``feature`` query parameter; a limited key must name one of its features
body       the handler, once it has read the body (:func:`check_feature`)
lookup     the store, by the id in the path (``/api/reviews/{trace_id}``), only for limited keys
list       the handler shows only the features the key may see (:func:`visible`)
global     the route spans every feature (or none): limited keys are refused
=========  =================================================================================

A route with no rule is for admins only; ``tests/server/test_access.py`` walks the app's
routes and fails on any that has none, so a new route gets its rule with it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from starlette.types import Scope

from keel.control.keys import Principal, Role
from keel.errors import PermissionDenied

Kind = Literal["path", "query", "body", "lookup", "list", "global", "public"]
APP: Role = "app"
REVIEWER: Role = "reviewer"
VIEWER: Role = "viewer"
READERS: tuple[Role, ...] = (APP, REVIEWER, VIEWER)  # the feature lists the pages show


@dataclass(frozen=True, slots=True)
class Rule:
    methods: frozenset[str]
    path: str  # the route's template, as the app declares it
    roles: frozenset[Role]  # besides admin, who may always
    kind: Kind
    param: str | None = None  # path: the parameter naming the feature; lookup: the id's
    table: str | None = None  # lookup: the table whose `feature` column answers
    column: str | None = None  # lookup: its id column (default: param)

    def pattern(self) -> re.Pattern[str]:
        parts = re.split(r"(\{[^}]+\})", self.path)
        out = ""
        for part in parts:
            if part.startswith("{"):
                name, _, conv = part[1:-1].partition(":")
                out += f"(?P<{name}>.*)" if conv == "path" else f"(?P<{name}>[^/]+)"
            else:
                out += re.escape(part)
        return re.compile(f"^{out}$")


def _rule(methods: str, path: str, *roles: Role, kind: Kind = "global",
          param: str | None = None, table: str | None = None,
          column: str | None = None) -> Rule:
    return Rule(frozenset(methods.split()), path, frozenset(roles), kind, param, table,
                column or param)


def _public(path: str) -> Rule:
    return Rule(frozenset({"GET"}), path, frozenset(), "public")


def _feature_read(path: str, param: str = "feature") -> Rule:
    return _rule("GET", path, VIEWER, kind="path", param=param)


RULES: tuple[Rule, ...] = (
    # pages are static shells (their data comes from the API below), liveness, API docs
    _public("/"), _public("/dashboard"), _public("/dashboard/{rest:path}"), _public("/review"),
    _public("/static/{file}"), _public("/healthz"), _public("/openapi.json"), _public("/docs"),
    _public("/docs/oauth2-redirect"), _public("/redoc"),
    # app: call features
    _rule("POST", "/v1/features/{name}", APP, kind="path", param="name"),
    _rule("POST", "/v1/chat/completions", APP, kind="body"),
    _rule("POST", "/v1/embeddings", APP, kind="body"),
    _rule("POST", "/api/feedback", APP, kind="body"),
    _rule("GET", "/v1/models", *READERS, kind="list"),
    _rule("GET", "/v1/models/{model}", *READERS, kind="path", param="model"),
    _rule("GET", "/v1/features", *READERS, kind="list"),
    # reviewer: the queue
    _rule("GET", "/api/reviews", REVIEWER, kind="query"),
    _rule("GET", "/api/reviews/stats", REVIEWER, VIEWER, kind="query"),
    _rule("POST", "/api/reviews/next", REVIEWER, kind="body"),
    _rule("GET", "/api/reviews/{trace_id}", REVIEWER, kind="lookup", param="trace_id",
          table="review_items"),
    _rule("POST", "/api/reviews/{trace_id}/verdict", REVIEWER, kind="lookup", param="trace_id",
          table="review_items"),
    # viewer: read the dashboard's data
    _rule("GET", "/api/stats/overview", VIEWER),
    _feature_read("/api/stats/features/{feature}"),
    _rule("GET", "/api/stats/costs", VIEWER, kind="query"),
    _rule("GET", "/api/feedback", APP, VIEWER, kind="query"),
    _rule("GET", "/api/feedback/stats", VIEWER, kind="query"),
    _rule("GET", "/api/events", VIEWER, kind="query"),
    _rule("GET", "/api/events/{trace_id}", VIEWER, kind="lookup", param="trace_id",
          table="events"),
    _feature_read("/api/features/{feature}/versions"),
    _feature_read("/api/features/{feature}/versions/{version}"),
    _feature_read("/api/features/{feature}/aliases"),
    _feature_read("/api/features/{feature}/rollout"),
    _rule("GET", "/api/datasets", VIEWER),
    _rule("GET", "/api/datasets/{name}", VIEWER),
    _rule("GET", "/api/datasets/{name}/{number}", VIEWER),
    _rule("GET", "/api/eval-runs", VIEWER, kind="query"),
    _rule("GET", "/api/eval-runs/{run_id}", VIEWER, kind="lookup", param="run_id",
          table="eval_runs", column="id"),
    _feature_read("/api/drift/{feature}"),
    _rule("GET", "/api/slo", VIEWER),
    _feature_read("/api/slo/{feature}"),
    _rule("GET", "/api/budgets", VIEWER),
    _rule("GET", "/api/circuits", VIEWER),
    _rule("GET", "/metrics", VIEWER),
    # admin only: the control plane, keys, the audit trail
    _rule("POST", "/api/features/{feature}/versions", kind="path", param="feature"),
    _rule("PUT", "/api/features/{feature}/aliases/{alias}", kind="path", param="feature"),
    _rule("POST", "/api/features/{feature}/train", kind="path", param="feature"),
    _rule("POST", "/api/features/{feature}/rollout", kind="path", param="feature"),
    _rule("POST", "/api/features/{feature}/rollout/{action}", kind="path", param="feature"),
    _rule("GET POST", "/api/keys"),
    _rule("DELETE", "/api/keys/{key_id}"),
    _rule("GET", "/api/audit"),
    _rule("GET", "/api/audit/verify"),
)

ADMIN_ONLY = Rule(frozenset(), "(no rule)", frozenset(), "global")


class Rules:
    """Finds a request's rule. Exact paths by one dict lookup; templated ones by regex,
    remembered per (method, path) up to a bound."""

    def __init__(self, rules: Iterable[Rule] = RULES, memo_size: int = 4096) -> None:
        self._exact: dict[tuple[str, str], Rule] = {}
        self._templated: list[tuple[Rule, re.Pattern[str]]] = []
        for rule in rules:
            if "{" in rule.path:
                self._templated.append((rule, rule.pattern()))
            else:
                for method in rule.methods:
                    self._exact.setdefault((method, rule.path), rule)
        self._memo: dict[tuple[str, str], tuple[Rule, str | None]] = {}
        self._memo_size = memo_size

    def match(self, method: str, path: str) -> tuple[Rule, str | None]:
        """The rule and the value of its ``param`` (None when it has none); ADMIN_ONLY
        when no rule covers the request."""
        if method == "HEAD":
            method = "GET"
        rule = self._exact.get((method, path))
        if rule is not None:
            return rule, None
        key = (method, path)
        found = self._memo.get(key)
        if found is not None:
            return found
        found = ADMIN_ONLY, None
        for rule, pattern in self._templated:
            if method in rule.methods:
                m = pattern.match(path)
                if m is not None:
                    found = rule, (m.group(rule.param) if rule.param else None)
                    break
        if len(self._memo) >= self._memo_size:
            self._memo.clear()
        self._memo[key] = found
        return found


def _roles_text(rule: Rule) -> str:
    roles = sorted(rule.roles)
    if not roles:
        return "an admin key"
    names = ", ".join(roles[:-1]) + (" or " if len(roles) > 1 else "") + roles[-1]
    return f"a key with role {names} (or admin)"


def role_denied(principal: Principal, rule: Rule, method: str, path: str) -> str | None:
    """Why the principal's role may not make this request; None when it may."""
    if principal.role == "admin" or principal.role in rule.roles:
        return None
    return (f"{method} {path} needs {_roles_text(rule)}; key '{principal.name}' has role "
            f"{principal.role}")


def _limited(principal: Principal) -> str:
    return f"key '{principal.name}' may use only feature(s) {', '.join(sorted(principal.features or ()))}"


def feature_denied(principal: Principal, feature: str | None, *, what: str) -> str | None:
    """Why the principal may not touch ``feature`` (None: it may). ``feature`` None: the
    request names none (a read across every feature)."""
    if principal.features is None:
        return None
    if feature is None:
        return f"{_limited(principal)}; {what} — name one of them"
    if feature in principal.features:
        return None
    return f"{_limited(principal)}, not '{feature}'"


def principal_of(scope: Scope) -> Principal | None:
    state = scope.get("state")
    value = state.get("principal") if isinstance(state, dict) else None
    return value if isinstance(value, Principal) else None


def check_feature(scope: Scope, feature: str) -> None:
    """For handlers of ``body`` rules: refuse a key limited to other features."""
    principal = principal_of(scope)
    if principal is not None:
        why = feature_denied(principal, feature, what="")
        if why is not None:
            raise PermissionDenied(why, param="feature")


def queue_feature(scope: Scope, feature: str | None) -> str | None:
    """The feature a limited reviewer's ``next`` draws from: the one asked for (checked),
    else its only feature; a key with several must name one."""
    principal = principal_of(scope)
    if principal is None or principal.features is None:
        return feature
    if feature is None and len(principal.features) == 1:
        return next(iter(principal.features))
    why = feature_denied(principal, feature, what='pass "feature" in the body')
    if why is not None:
        raise PermissionDenied(why, param="feature")
    return feature


def visible(scope: Scope, names: Iterable[str]) -> list[str]:
    """For handlers of ``list`` rules: the features this request's key may see."""
    principal = principal_of(scope)
    if principal is None or principal.features is None:
        return list(names)
    return [n for n in names if n in principal.features]


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Only this machine can reach an address bound here."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
