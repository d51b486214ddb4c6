"""Token counts from characters, for the decisions that must be made without asking the API.

GigaChat's tokens are about 3-4 characters of Russian or English text, but punctuation and
rare symbols can cost a token each. A budget reservation must not be exceeded, so it assumes
one character per token (a reservation is only held while a request is in flight, so
over-reserving costs nothing but a slightly earlier stop near the budget). For the input-limit
check a text is taken to fit without counting at 2 characters per token or fewer; above that
the embeddings kind asks `/tokens/count`, and a 413 that still slips through is bisected.
"""

from __future__ import annotations

import math
import re

PESSIMISTIC_CHARS_PER_TOKEN = 1.0
SURE_FIT_CHARS_PER_TOKEN = 2.0
# Characters of three or four UTF-8 bytes (CJK, emoji, rare symbols): a tokenizer with byte
# fallback may spend a token on each of their bytes. Latin and Cyrillic take at most two.
_WIDE_CHARACTER = re.compile("[^\x00-\u07ff]")


def token_ceiling(characters: int) -> int:
    """More tokens than `characters` of text will plausibly be counted as."""
    return math.ceil(characters / PESSIMISTIC_CHARS_PER_TOKEN)


def text_token_ceiling(text: str) -> int:
    """At least as many tokens as `text` can be counted as: one per character, and one per
    UTF-8 byte for characters outside Latin, Cyrillic and the other two-byte scripts."""
    ceiling = token_ceiling(len(text))
    if text.isascii():
        return ceiling
    return ceiling + sum(len(m.group().encode()) - 1 for m in _WIDE_CHARACTER.finditer(text))


def surely_fits(characters: int, limit_tokens: int) -> bool:
    """True when a text this long is taken to be under `limit_tokens` without counting it."""
    return characters <= limit_tokens * SURE_FIT_CHARS_PER_TOKEN
