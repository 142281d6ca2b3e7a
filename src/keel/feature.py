"""A feature ready to serve: its spec compiled once into checks, validators, a router
and one provider request template per version. Nothing here runs per call except
:meth:`Feature.request`, which copies a template with the call's input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from keel.providers.base import Provider, ProviderRequest
from keel.spec import FeatureSpec, KeelSpec, ProviderSpec, VersionSpec
from keel.stages.checks import Check, build_checks
from keel.stages.circuit import CircuitBreaker, Circuits, CircuitSettings
from keel.stages.guards import CustomCheck, Guard, build_guards
from keel.stages.route import Router
from keel.stages.route_policy import RoutePolicy
from keel.stages.validate import Validator, build_validators
from keel.stages.validate.custom import CustomValidator
from keel.stages.validate.grounded import Embed
from keel.types import JSON

LOCAL = ProviderSpec(type="local", timeout_s=30.0)


@dataclass(frozen=True, slots=True)
class Target:
    version: str
    provider: Provider
    provider_type: str
    template: ProviderRequest
    breaker: CircuitBreaker


class Feature:
    def __init__(self, name: str, spec: FeatureSpec, root: KeelSpec,
                 providers: Mapping[str, Provider], circuits: Circuits,
                 custom_checks: Mapping[str, CustomCheck] | None = None,
                 count_tokens: Callable[[str], int] | None = None,
                 custom_validators: Mapping[str, CustomValidator] | None = None,
                 embed: Embed | None = None) -> None:
        self.name = name
        self.spec = spec
        self.checks: list[Check] = build_checks(spec)
        self.guards: list[Guard] = build_guards(spec, custom_checks or {}, count_tokens)
        self.validators: list[Validator] = build_validators(spec, custom_validators, embed)
        self.router = Router(spec.aliases, spec.fallbacks)
        # the cost-aware policy over the router's route (routing: in keel.yaml), if any
        self.routing = RoutePolicy(spec.routing) if spec.routing is not None else None
        self._root = root
        self._providers = providers
        self._circuits = circuits
        self.targets: dict[str, Target] = {}
        for vname, version in spec.versions.items():
            self.add_version(vname, version)

    def add_version(self, vname: str, version: VersionSpec) -> Target:
        """Compile one version into a target (keel.yaml's at start; registered ones later).
        Its provider must be in ``providers``; the caller prepares the target."""
        spec, root = self.spec, self._root
        if vname not in spec.versions:
            self.spec = spec.model_copy(update={"versions": {**spec.versions, vname: version}})
        pspec = root.providers.get(version.provider, LOCAL)
        params = dict(version.params)
        if spec.input.text_field:
            params.setdefault("text_field", spec.input.text_field)
        template = ProviderRequest(
            feature=self.name,
            version=vname,
            model=version.model,
            input={},
            output_kind=spec.output.kind,
            timeout_s=version.timeout_s or pspec.timeout_s,
            first_byte_timeout_s=pspec.first_byte_timeout_s,
            prompt=version.prompt,
            system=version.system,
            labels=spec.output.labels,
            label_descriptions=spec.output.label_descriptions or None,
            params=params,
        )
        breaker = self._circuits.get(version.provider, version.model, CircuitSettings(
            pspec.circuit.failure_threshold, pspec.circuit.reset_after_s))
        target = Target(vname, self._providers[version.provider], pspec.type, template, breaker)
        self.targets[vname] = target
        return target

    def request(self, version: str, input: dict[str, JSON],
                options: dict[str, JSON] | None = None) -> ProviderRequest:
        template = self.targets[version].template
        if template.output_kind == "chat":
            return dataclasses.replace(template, input=input, messages=input.get("messages"),
                                       options=options or {})
        if options:
            return dataclasses.replace(template, input=input, options=options)
        return dataclasses.replace(template, input=input)
