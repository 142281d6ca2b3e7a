"""The OpenAPI document Keel serves is valid, every reference in it resolves, and it says
what the handlers really take and answer: the query parameters and bodies they read raw,
the key they need (401, 403), and no FastAPI 422 that Keel never sends.
``tests/e2e/test_fuzz_api.py`` fuzzes the server against this document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis

from keel.server import create_app
from keel.server.access import RULES
from keel.server.openapi import BODIES, PATH_SCHEMAS, QUERY
from tests.server.access_kit import make_keel

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    keel = make_keel(tmp_path_factory.mktemp("openapi"))
    document: dict[str, Any] = create_app(keel).openapi()
    return document


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in doc["paths"].items()
            for method, op in item.items() if method in METHODS}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


def test_the_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    for result in schema.get_all_operations():
        result.ok()  # raises the operation's InvalidSchema, if any


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    found = refs(doc)
    assert found, "no $ref at all: the walk no longer understands the document"
    for ref in found:
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]
    # a request body's pydantic $defs (e.g. VersionSpec's PriceSpec) moved to components
    assert not any(r.startswith("#/$defs/") for r in found)
    assert "PriceSpec" in doc["components"]["schemas"]


def test_keel_never_answers_fastapis_422(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for (method, path), op in operations(doc).items():
        if "422" in op["responses"]:  # only feedback's own 422, in Keel's error shape
            assert (method, path) == ("POST", "/api/feedback")
            schema = op["responses"]["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}


def test_protected_operations_declare_the_key_and_its_401_and_403(doc: dict[str, Any]) -> None:
    public = {(m, r.path) for r in RULES if r.kind == "public" for m in r.methods}
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for key, op in operations(doc).items():
        if key in public:
            assert "security" not in op and "401" not in op["responses"], key
        else:
            assert op["security"] == [{"bearer": []}, {"apiKey": []}], key
            assert {"401", "403"} <= set(op["responses"]), key


def test_what_handlers_read_raw_is_documented_and_nothing_stale(doc: dict[str, Any]) -> None:
    ops = operations(doc)
    for key, params in QUERY.items():
        assert key in ops, f"QUERY documents {key}, which the app does not have"
        documented = {p["name"] for p in ops[key]["parameters"] if p["in"] == "query"}
        assert documented == {p["name"] for p in params}, key
        assert "400" in ops[key]["responses"], key
    for key in BODIES:
        assert key in ops and "requestBody" in ops[key], key
    for method, path, name in PATH_SCHEMAS:
        params = {p["name"]: p for p in ops[method, path]["parameters"]}
        assert params[name]["schema"] == PATH_SCHEMAS[method, path, name]
    # the registry API's body is {"name", "spec"}, not the bare version spec
    body = ops["POST", "/api/features/{feature}/versions"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["required"] == ["name", "spec"]
    # the stream of a chat completion is documented next to the JSON answer
    assert {"application/json", "text/event-stream"} <= set(
        ops["POST", "/v1/chat/completions"]["responses"]["200"]["content"])


def test_the_document_is_built_once(tmp_path: Path) -> None:
    app = create_app(make_keel(tmp_path))
    assert app.openapi() is app.openapi()
