"""Reward models: ``r(x, y)`` of any Hugging Face sequence-classification model.

Used by the ``reward_model`` score (a margin per pair) and the ``reward_model`` judge; it sits below both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefalign.data.records import Text
from prefalign.models import DTYPES


def conversation_text(tokenizer: Any, prompt: Text, completion: Text) -> str:
    """Prompt and completion as one text for a reward model: its chat template, or plain concatenation."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        reply = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
        return tokenizer.apply_chat_template(messages + reply, tokenize=False)
    as_text = lambda value: value if isinstance(value, str) else "\n".join(m["content"] for m in value)
    return as_text(prompt) + as_text(completion)


class RewardModel:
    """A Hugging Face sequence-classification reward model: ``r(x, y)`` = its first logit.

    Args:
        model: hub name or local folder (the papers use ``Skywork/Skywork-Reward-Llama-3.1-8B-v0.2``).
        dtype: parameter dtype.
        max_length: truncation of prompt + response, in the reward model's tokens (keeps the end).
        batch_size: texts per forward pass.
    """

    def __init__(self, model: str, dtype: str = "float32", max_length: int = 1024, batch_size: int = 8) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=DTYPES[dtype]).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length
        self.batch_size = batch_size

    def to(self, device: torch.device) -> RewardModel:
        self.model.to(device)
        return self

    @torch.no_grad()
    def rewards(self, prompts: list[Text], completions: list[Text]) -> Tensor:
        """``r(x, y)`` for each (prompt, completion), float64 on CPU."""
        texts = [conversation_text(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        device = next(self.model.parameters()).device
        values = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
            ).to(device)
            values.append(self.model(**encoded).logits[:, 0].double().cpu())
        return torch.cat(values)
