"""Providers: one module per wire protocol, all behind :class:`~keel.providers.base.Provider`.

Built-in types load through the same table outside ones are added to, so adding a
provider never edits the pipeline: put ``"type": "module:Class"`` in
:data:`PROVIDER_TYPES` (or pass ``extra_types``), where ``Class(name, spec)`` builds it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from keel.errors import ConfigError
from keel.providers.base import Provider, ProviderRequest
from keel.spec import ProviderSpec

PROVIDER_TYPES: Mapping[str, str] = {
    "local": "keel.providers.local:LocalProvider",
    "openai": "keel.providers.openai:OpenAIProvider",
    "anthropic": "keel.providers.anthropic:AnthropicProvider",
    "llama_cpp": "keel.providers.llama_cpp:LlamaCppProvider",
}


def build_provider(name: str, spec: ProviderSpec, extra_types: Mapping[str, str] | None = None) -> Provider:
    types = {**PROVIDER_TYPES, **(extra_types or {})}
    target = types.get(spec.type)
    if target is None:
        raise ConfigError(
            f"providers.{name}.type: unknown provider type '{spec.type}' "
            f"(known: {', '.join(sorted(types))})"
        )
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    provider: Provider = cls(name, spec)
    return provider


__all__ = ["PROVIDER_TYPES", "Provider", "ProviderRequest", "build_provider"]
