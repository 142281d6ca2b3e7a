"""Reading a request body without trusting it: the size limit is enforced while
reading (a 10 MB body is refused after the first megabyte, or at once when
Content-Length says so)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from keel.stages.checks.body import check_size, parse_json_object


async def read_json_object(request: Request, limit: int) -> tuple[dict[str, Any], int]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_size(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        check_size(size, limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    return parse_json_object(raw, limit), len(raw)
