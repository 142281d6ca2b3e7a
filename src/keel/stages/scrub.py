"""Secrets out of everything Keel stores or logs.

A :class:`Scrubber` replaces, in any text:

* the secrets this process knows: the providers' ``api_key`` and secret-looking
  ``headers`` from keel.yaml, the gateway's own keys (``KEEL_API_KEYS``) and environment
  variables named like ``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``;
* ``Authorization`` / ``Proxy-Authorization`` / ``x-api-key`` / ``api-key`` header values;
* common secret shapes: OpenAI and Anthropic keys (``sk-...``), bearer tokens, AWS access
  key ids, GitHub and Slack tokens, Google API keys, PEM private key blocks, credentials in
  URLs (``scheme://user:password@host``) and ``password=...``-style pairs;

with ``[SECRET]`` (the name of a pair or header is kept: ``password=[SECRET]``). In JSON
values (:meth:`Scrubber.value`) every string is scrubbed, and a string under a key such
as ``authorization``, ``api_key`` or ``password`` is replaced whole. Values are copied
only where something changed, so scrubbing a clean event allocates nothing.

:class:`LogScrubbing` applies the same to every log record made while it is installed
(its message, and its traceback when that holds a secret).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MASK = "[SECRET]"
MIN_KNOWN = 8  # shorter configured "secrets" (test values, placeholders) are not masked

# keys whose string value is a secret whatever it looks like (lower-cased, '-' as '_')
SECRET_KEYS = frozenset({
    "authorization", "proxy_authorization", "x_api_key", "api_key", "apikey", "password",
    "passwd", "secret", "client_secret", "access_token", "refresh_token", "auth_token",
    "private_key", "aws_secret_access_key", "secret_access_key",
})
_SECRET_ENV = re.compile(r"(?:^|_)(?:API_?KEYS?|TOKEN|SECRET|PASSWORD|PASSWD|ACCESS_KEY)$")
_SECRET_HEADER = re.compile(r"(?i)auth|key|token|secret|password|cookie")

# (triggers, pattern, replacement): the pattern runs only when one of its trigger literals
# is in the lower-cased text. Patterns that start with a literal are fast in `re`; one
# alternation of every full pattern cost ~50x more on clean text, the usual case
_Rule = tuple[tuple[str, ...], re.Pattern[str], str]
_RULES: tuple[_Rule, ...] = tuple((tuple(t.split("|")), re.compile(p), r) for t, p, r in (
    ("private key-----",
     r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----[\s\S]*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----",
     MASK),
    ("authorization|api-key",
     r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key)([\"']?\s*[:=]\s*[\"']?)"
     r"((?:bearer|basic|token)\s+)?[^\s\"',;}]+",
     rf"\1\2\3{MASK}"),
    ("bearer", r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", rf"\1{MASK}"),
    ("sk-", r"\bsk-[A-Za-z0-9_-]{16,}", MASK),
    ("akia|asia|abia|acca", r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b", MASK),
    ("ghp_|gho_|ghu_|ghs_|ghr_", r"\bgh[pousr]_[A-Za-z0-9]{30,}", MASK),
    ("xox", r"\bxox[abprs]-[A-Za-z0-9-]{10,}", MASK),
    ("aiza", r"\bAIza[0-9A-Za-z_-]{35}", MASK),
    ("://", r"\b([a-z][a-z0-9+.-]{1,15}://[^/\s:@\"']{1,64}:)[^/\s@\"']{1,128}(?=@)",
     rf"\1{MASK}"),
    ("passw|pwd|secret|_token|api_key|apikey",
     r"(?i)\b(password|passwd|pwd|secret|client_secret|api_key|apikey|access_token"
     r"|refresh_token|auth_token|aws_secret_access_key)([\"']?\s*[:=]\s*[\"']?)"
     r"(?!\[SECRET\])[^\s\"',;&}]+",
     rf"\1\2{MASK}"),
))


# every trigger literal in one alternation: on clean text one search says there is none
_ANY_TRIGGER = re.compile("|".join(re.escape(t) for triggers, _, _ in _RULES for t in triggers))
SHORTEST = 8  # shorter strings (ids, codes, labels) are not looked at


class Scrubber:
    """Masks secrets in text and in JSON values (see the module doc)."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        # longest first: a key that contains another is masked whole
        self.known = tuple(sorted({s for s in known if s and len(s) >= MIN_KNOWN},
                                  key=len, reverse=True))

    @classmethod
    def for_process(cls, providers: Mapping[str, Any], api_keys: Iterable[str] = (),
                    env: Mapping[str, str] | None = None) -> Scrubber:
        """The secrets of this process: ``providers`` are keel.yaml's ProviderSpecs."""
        env = os.environ if env is None else env
        known: list[str] = list(api_keys)
        for spec in providers.values():
            if getattr(spec, "api_key", None):
                known.append(spec.api_key)
            for name, value in (getattr(spec, "headers", None) or {}).items():
                if _SECRET_HEADER.search(name):
                    known.append(value.split(" ", 1)[-1])  # "Bearer xyz": the token
        for name, value in env.items():
            if _SECRET_ENV.search(name.upper()):
                known.extend(v.strip() for v in value.split(","))
        return cls(known)

    def text(self, text: str) -> str:
        """``text`` with its secrets masked; the same object when it has none."""
        if len(text) < SHORTEST:
            return text
        for secret in self.known:
            if secret in text:
                text = text.replace(secret, MASK)
        lower = text.lower()
        if _ANY_TRIGGER.search(lower) is None:
            return text
        for triggers, pattern, replacement in _RULES:
            for trigger in triggers:
                if trigger in lower:
                    text = pattern.sub(replacement, text)
                    break
        return text

    def value(self, value: Any) -> Any:
        """A JSON value (or dataclass) with every string scrubbed: the same object when
        nothing changed, a copy of the changed parts otherwise."""
        if type(value) is str:  # not str enums (Decision, OnFail): they hold no secret
            return self.text(value)
        if isinstance(value, dict):
            out: dict[Any, Any] | None = None
            for k, v in value.items():
                if type(v) is str and v and isinstance(k, str) and _secret_key(k):
                    new: Any = MASK
                else:
                    new = self.value(v)
                if new is not v:
                    if out is None:
                        out = dict(value)
                    out[k] = new
            return value if out is None else out
        if isinstance(value, list | tuple):
            items = [self.value(v) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return items if isinstance(value, list) else tuple(items)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {}
            for f in dataclasses.fields(value):
                old = getattr(value, f.name)
                new = self.value(old)
                if new is not old:
                    changes[f.name] = new
            return dataclasses.replace(value, **changes) if changes else value
        return value

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)


def _secret_key(key: str) -> bool:
    return key.lower().replace("-", "_") in SECRET_KEYS


class LogScrubbing:
    """Scrubs every log record made while installed: a wrapper around the process's log
    record factory (the one hook every logger, handler and test capture goes through)."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self.active = False
        self._previous: Callable[..., logging.LogRecord] | None = None
        self._factory: Callable[..., logging.LogRecord] | None = None

    def install(self) -> None:
        if self.active:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if self.active:
                self.scrub(record)
            return record

        self._previous, self._factory, self.active = previous, factory, True
        logging.setLogRecordFactory(factory)

    def uninstall(self) -> None:
        self.active = False  # a wrapper someone installed after ours keeps calling it
        if self._previous is not None and logging.getLogRecordFactory() is self._factory:
            logging.setLogRecordFactory(self._previous)

    def scrub(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, not us
            return
        clean = self.scrubber.text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            clean = self.scrubber.text(text)
            if clean != text:  # the exception object itself would tell the secret again
                record.exc_text, record.exc_info = clean, None
