"""The answer store: a content cache shared by every run on a machine, a journal in each
output directory, and the remembered stream limit. Independent of the engine: a kind gives
key material and payload bytes; these modules keep them safe across processes and crashes.
"""

from batch.cache.answers import (
    CachedAnswer,
    chat_from_payload,
    chat_payload,
    embedding_from_payload,
    embedding_payload,
)
from batch.cache.journal import JOURNAL_FILE, AnswerJournal, JournalEntry
from batch.cache.keys import (
    KEY_VERSION,
    cache_key,
    canonical_json,
    chat_material,
    embedding_material,
    request_material,
)
from batch.cache.limits import RememberedLimit, model_family, recall_limit, remember_limit
from batch.cache.location import CACHE_DIR_VARIABLE, default_cache_dir, resolve_cache_dir
from batch.cache.retention import parse_age, parse_size
from batch.cache.store import STORE_FILE, AnswerStore, CacheInfo, ModelShare, PruneReport

__all__ = [
    "CACHE_DIR_VARIABLE",
    "JOURNAL_FILE",
    "KEY_VERSION",
    "STORE_FILE",
    "AnswerJournal",
    "AnswerStore",
    "CacheInfo",
    "CachedAnswer",
    "JournalEntry",
    "ModelShare",
    "PruneReport",
    "RememberedLimit",
    "cache_key",
    "canonical_json",
    "chat_from_payload",
    "chat_material",
    "chat_payload",
    "default_cache_dir",
    "embedding_from_payload",
    "embedding_material",
    "embedding_payload",
    "model_family",
    "parse_age",
    "parse_size",
    "recall_limit",
    "remember_limit",
    "request_material",
    "resolve_cache_dir",
]
