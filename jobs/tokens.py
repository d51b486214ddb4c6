"""Token counts from characters, for the decisions that must be made without asking the API.

GigaChat's tokens are about 3-4 characters of Russian or English text; code, numbers and
punctuation run shorter. A reservation for a budget must not be exceeded, so it assumes
1.5 characters per token; a text is surely under an input limit only at 2 characters per
token or fewer (above that, the embeddings kind asks `/tokens/count`).
"""

from __future__ import annotations

import math

PESSIMISTIC_CHARS_PER_TOKEN = 1.5
SURE_FIT_CHARS_PER_TOKEN = 2.0


def token_ceiling(characters: int) -> int:
    """More tokens than `characters` of text will plausibly be counted as."""
    return math.ceil(characters / PESSIMISTIC_CHARS_PER_TOKEN)


def surely_fits(characters: int, limit_tokens: int) -> bool:
    """True when a text this long is under `limit_tokens` without counting it."""
    return characters <= limit_tokens * SURE_FIT_CHARS_PER_TOKEN
