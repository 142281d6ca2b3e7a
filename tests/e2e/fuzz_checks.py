"""A schemathesis check for the fuzz run without a key (tests/e2e/test_fuzz_api.py): the
schemathesis CLI loads this module (``SCHEMATHESIS_HOOKS``) and runs the check on every
answer. Every operation but the public ones must answer 401 ``invalid_api_key`` in Keel's
error shape."""

from __future__ import annotations

from typing import Any

import schemathesis

from keel.server.access import RULES

PUBLIC = frozenset((method, rule.path) for rule in RULES if rule.kind == "public"
                   for method in rule.methods)


@schemathesis.check
def keel_requires_a_key(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                        case: schemathesis.Case) -> bool | None:
    if (case.operation.method.upper(), case.operation.path) in PUBLIC:
        return None
    if response.status_code != 401:
        raise AssertionError(f"answered {response.status_code} without an API key, not 401")
    try:
        body: Any = response.json()
        error = body["error"]
        assert error["code"] == "invalid_api_key" and error["message"]
        assert set(error) == {"code", "message", "type", "param"}
    except Exception:
        raise AssertionError(f"a 401 not in Keel's error shape: {response.text[:300]}") from None
    return None
