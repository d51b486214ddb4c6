"""The embeddings input limit, checked before sending: texts the character heuristic cannot
clear are counted exactly with `/tokens/count` (one call for all of them); one over the
limit is rejected, or with `on_long_text="truncate"` cut until it fits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from batch.api_types import TokenCount
from batch.errors import ServerError
from jobs.tokens import surely_fits

# Truncation aims this many tokens under the limit, and gives up after this many rounds.
TRUNCATE_MARGIN = 16
TRUNCATE_ROUNDS = 4


class TokenCounter(Protocol):
    async def tokens_count(self, inputs: Sequence[str], model: str) -> list[TokenCount]: ...


async def fit_input_limit(
    client: TokenCounter, model: str, texts: dict[int, str], limit: int, on_long_text: str
) -> tuple[dict[int, str], dict[int, str]]:
    """The texts to send (by slot, truncated where allowed), and why each other one is
    rejected."""
    unsure = {i: t for i, t in texts.items() if not surely_fits(len(t), limit)}
    if not unsure:
        return texts, {}
    sendable = dict(texts)
    over = await _over_limit(client, model, unsure, limit)
    if on_long_text == "truncate":
        target = limit - TRUNCATE_MARGIN
        for _ in range(TRUNCATE_ROUNDS):
            if not over:
                break
            shorter = {
                i: sendable[i][: max(1, len(sendable[i]) * target // tokens)]
                for i, tokens in over.items()
            }
            sendable.update(shorter)
            over = await _over_limit(client, model, shorter, limit)
    rejected: dict[int, str] = {}
    for i, tokens in over.items():
        del sendable[i]
        rejected[i] = (
            f"text has {tokens} tokens, over the {limit}-token input limit of {model}"
            + (
                " after truncation"
                if on_long_text == "truncate"
                else " (use --on-long-text truncate to cut it)"
            )
        )
    return sendable, rejected


async def _over_limit(
    client: TokenCounter, model: str, texts: Mapping[int, str], limit: int
) -> dict[int, int]:
    """Exact token counts of `texts`, keeping those over `limit`."""
    counts = await client.tokens_count(list(texts.values()), model)
    if len(counts) != len(texts):
        raise ServerError(f"tokens/count answered {len(counts)} counts for {len(texts)} texts")
    return {i: c.tokens for i, c in zip(texts, counts, strict=True) if c.tokens > limit}
