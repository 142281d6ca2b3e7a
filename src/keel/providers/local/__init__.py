"""Keel's embedded default model: an offline embedding classifier (see :mod:`.provider`)."""

from keel.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
