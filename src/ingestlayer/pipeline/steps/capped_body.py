"""Reading the answer of a service a step calls (a model, a lookup provider), within a size.

The service is the user's, and a step runs on the worker's event loop: an answer that streams
on until the timeout must not grow the worker's memory with it.
"""

from __future__ import annotations

import aiohttp

# Far above any model answer or person lookup; below what a worker could hold per call at once.
MAX_ANSWER_BYTES = 1 << 20


class AnswerTooLarge(Exception):
    """The answer went past the limit; nothing of it is used."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response is larger than {limit} bytes")


async def read_capped(resp: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The whole body, or :class:`AnswerTooLarge` as soon as it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
