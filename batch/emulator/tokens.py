"""The emulator's one token-count function, shared by /tokens/count, chat usage and
embedding usage so the three agree the way the real API's counts do.

A token is a run of up to four word characters, or one punctuation character;
whitespace is free. So "Hello, world!" is 6 tokens (2+1+2+1) and a 9-letter word is 3.
"""

from __future__ import annotations

import re

_PIECES = re.compile(r"\w+|[^\w\s]")

# Tokens a chat message costs beyond its content (role and separators). This is the
# server's behaviour being modelled, so it lives here with the server; the client's own
# estimate of it is a separate, measured assumption kept with the job kinds (`jobs/`), and
# the two are compared by tests, never shared by import.
MESSAGE_OVERHEAD = 3
# Embedding usage per text is the count plus this (the real API reports about 5 more).
EMBEDDING_OVERHEAD = 5


def count_tokens(text: str) -> int:
    """Tokens in `text`: ceil(len/4) per run of word characters, 1 per punctuation mark."""
    return sum((len(piece) + 3) // 4 for piece in _PIECES.findall(text))
