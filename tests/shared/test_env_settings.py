"""rag_shared.config.EnvSettings: the environment as pydantic-settings read it for these classes
(names in any case, AliasChoices, keyword arguments first, empty strings kept), without its import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from chat.settings import ChatSettings
from pydantic import ValidationError
from rag_shared.config import load_settings
from rag_shared.errors import ConfigError


def test_fields_come_from_the_environment_in_any_case(monkeypatch):
    monkeypatch.setenv("CHUNK_SIZE_TOKENS", "512")
    monkeypatch.setenv("search_type", "keyword")
    monkeypatch.setenv("CHAT_AUTH_MODE", "token")
    monkeypatch.setenv("CHAT_API_TOKEN", "t" * 24)
    monkeypatch.setenv("CHAT_API_DOCS", "true")
    settings = load_settings()
    assert (settings.chunk_size_tokens, settings.search_type) == (512, "keyword")
    chat = ChatSettings()
    assert chat.chat_auth_mode == "token" and chat.chat_api_docs is True
    assert chat.chat_api_token is not None and chat.chat_api_token.get_secret_value() == "t" * 24


def test_keyword_arguments_win_and_aliases_are_read(monkeypatch):
    monkeypatch.setenv("CHUNK_SIZE_TOKENS", "512")
    monkeypatch.setenv("RAG_MIN_SCORE", "0.7")
    assert load_settings(chunk_size_tokens=256).chunk_size_tokens == 256
    assert load_settings().min_score == 0.7
    assert load_settings(min_score=0.2).min_score == 0.2  # the field's name beats the variable


def test_an_empty_variable_is_an_empty_string_not_unset(monkeypatch):
    monkeypatch.setenv("RERANK_MODEL", "")  # the template's "reranking off"
    assert load_settings().rerank_model == ""
    monkeypatch.delenv("RERANK_MODEL")
    assert load_settings().rerank_model is None


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("CHUNK_SIZE_TOKENS", "many")
    with pytest.raises(ConfigError, match="CHUNK_SIZE_TOKENS"):
        load_settings()
    monkeypatch.setenv("MAX_BODY_BYTES", "12")
    with pytest.raises(ValidationError, match="max_body_bytes"):
        ChatSettings()


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        load_settings().chunk_size_tokens = 1  # type: ignore[misc]


def test_neither_function_imports_pydantic_settings_nor_click():
    """What the functions load before serving (run.sh's `python -m chat`; the indexer's handler)."""
    code = (
        "import sys, chat.__main__ as m, indexer.handler\n"
        "m.server(0).config.load()\n"
        "print(sorted(k for k in ('pydantic_settings', 'click', 'uvicorn.main', 'dotenv', 'pydantic.v1')"
        " if sys.modules.get(k)))"
    )
    out = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
