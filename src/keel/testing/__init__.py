"""Test doubles users can use too: fake upstreams that speak real wire formats and
fail on command (time out, 429 with Retry-After, 5xx, malformed JSON, a stream cut or
stalled mid-way, refused connections). One module per wire format; the shared server
harness and fault modes live in ``faults``.

    from keel.testing import FakeUpstream, FakeAnthropic
    with FakeUpstream(reply="billing") as up:          # OpenAI Chat Completions
        up.set_mode("rate_limit", times=1, retry_after=2)

    python -m keel.testing --port 9100 --reply billing  # the OpenAI fake as a process
"""

from keel.testing.fake_anthropic import ANTHROPIC_MODES, FakeAnthropic, ToolUse
from keel.testing.fake_openai import (
    FAKE_MODES,
    FakeMode,
    FakeUpstream,
    RecordedRequest,
    ReplyFn,
    closed_base_url,
    echo,
    fake_embedding,
)

__all__ = [
    "ANTHROPIC_MODES",
    "FAKE_MODES",
    "FakeAnthropic",
    "FakeMode",
    "FakeUpstream",
    "RecordedRequest",
    "ReplyFn",
    "ToolUse",
    "closed_base_url",
    "echo",
    "fake_embedding",
]
