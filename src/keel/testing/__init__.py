"""Test doubles users can use too: fake upstreams that speak real wire formats and
fail on command. One module per wire format; shared fault handling in ``faults``.

    from keel.testing import FakeUpstream          # OpenAI Chat Completions
    python -m keel.testing --port 9100 --reply billing
"""

from keel.testing.fake_openai import (
    FAKE_MODES,
    FakeMode,
    FakeUpstream,
    RecordedRequest,
    ReplyFn,
    echo,
)

__all__ = ["FAKE_MODES", "FakeMode", "FakeUpstream", "RecordedRequest", "ReplyFn", "echo"]
