"""Cache keys: versioned, canonical, and made of exactly what determines an answer."""

from __future__ import annotations

from batch.cache import KEY_VERSION, cache_key, chat_material, embedding_material


def test_a_key_starts_with_the_key_scheme_version() -> None:
    key = cache_key("embeddings", embedding_material("Embeddings", "hello"))
    assert key[0] == KEY_VERSION
    assert len(key) == 33


def test_the_same_material_of_two_kinds_gives_two_keys() -> None:
    material = b"same bytes"
    assert cache_key("chat", material) != cache_key("embeddings", material)


def test_embedding_keys_differ_by_model_and_by_exact_text() -> None:
    base = cache_key("embeddings", embedding_material("Embeddings", "hello"))
    assert base == cache_key("embeddings", embedding_material("Embeddings", "hello"))
    assert base != cache_key("embeddings", embedding_material("Embeddings-2", "hello"))
    assert base != cache_key("embeddings", embedding_material("Embeddings", "hello "))


def test_chat_material_ignores_field_order_and_transport_fields() -> None:
    body = {
        "model": "GigaChat",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.5,
    }
    reordered = {
        "temperature": 0.5,
        "stream": False,
        "update_interval": 0,
        "messages": [{"content": "Hi", "role": "user"}],
        "model": "GigaChat",
    }
    assert chat_material(body) == chat_material(reordered)


def test_chat_material_changes_with_every_answer_affecting_field() -> None:
    body = {"model": "GigaChat", "messages": [{"role": "user", "content": "Hi"}]}
    changes = {
        "model": "GigaChat-Max",
        "messages": [{"role": "user", "content": "Hi!"}],
        "functions": [{"name": "f", "parameters": {}}],
        "function_call": "auto",
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 10,
        "repetition_penalty": 1.1,
        "profanity_check": True,
    }
    materials = {chat_material({**body, name: value}) for name, value in changes.items()}
    assert chat_material(body) not in materials
    assert len(materials) == len(changes)


def test_message_order_is_part_of_the_key() -> None:
    a = {"role": "user", "content": "one"}
    b = {"role": "assistant", "content": "two"}
    assert chat_material({"messages": [a, b]}) != chat_material({"messages": [b, a]})


def test_integral_floats_and_ints_are_the_same_setting_and_null_means_absent() -> None:
    body = {"model": "GigaChat", "messages": [], "temperature": 1}
    assert chat_material(body) == chat_material({**body, "temperature": 1.0})
    assert chat_material(body) == chat_material({**body, "top_p": None})
