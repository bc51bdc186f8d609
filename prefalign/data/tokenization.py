"""Tokenising preference pairs: chat template, completion-only tokens, truncation.

Conventions (TRL's, with the boundary and special-token pitfalls handled explicitly):

* **Prompt.** A conversational prompt (a message list) is rendered with the tokenizer's chat template and
  ``add_generation_prompt=True``. A plain-string prompt is wrapped as one user message when the tokenizer has a
  chat template (``use_chat_template: auto``) and used as raw text otherwise (base models such as Pythia).
  The rendered text is tokenised with ``add_special_tokens=False``; a BOS token is prepended only when the
  tokenizer normally adds one and the text does not already start with it (Llama-3 templates write
  ``<|begin_of_text|>`` themselves), so BOS is never duplicated.
* **Completion.** Prompt and completion are tokenised separately and concatenated, so the boundary never
  merges a prompt token with a completion token. A string completion is tokenised as is and EOS is appended
  unless it already ends with EOS. A conversational completion (assistant messages) is rendered with the chat
  template after the prompt, and the completion is the rendered text that follows the rendered prompt
  (whitespace after the final EOS is dropped), so turn markers are exactly the template's.
* **Only completion tokens count** in log-probs: the prompt is kept apart in the batch
  (:mod:`prefalign.data.collate`) and :func:`prefalign.logprobs.completion_logps` only scores completion tokens.
* **Truncation policy** (applied in this order; every truncation is counted in ``data_report.json``):
  1. a prompt longer than ``max_prompt_length`` keeps its *last* ``max_prompt_length`` tokens (the end of the
     prompt holds the question and the generation prompt; a leading BOS is kept);
  2. a completion that does not fit in ``max_length`` together with the (truncated) prompt keeps its *first*
     ``max_length - len(prompt)`` tokens (the EOS is then lost, as in TRL).
  Since ``max_prompt_length < max_length``, every completion keeps at least one token. Two completions that
  differ only after the cut become identical; :func:`prefalign.data.datamodule.prepare_split` drops such pairs
  (``identical_after_truncation`` in ``data_report.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from prefalign.data.records import Message, PreferencePair, Text


@dataclass
class TokenizedPair:
    """Token ids of one pair; ``prompt_ids`` is shared by both completions."""

    pair_id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: dict[str, bool] = field(default_factory=dict)


class PairTokenizer:
    """Turns :class:`PreferencePair` records into :class:`TokenizedPair` token ids.

    Args:
        tokenizer: a Hugging Face tokenizer (with a pad token).
        max_length: maximum prompt + completion length in tokens, per completion.
        max_prompt_length: maximum prompt length in tokens (must be smaller than ``max_length``).
        use_chat_template: ``"auto"`` (use it when the tokenizer has one), ``True`` or ``False``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 512,
        max_prompt_length: int = 256,
        use_chat_template: bool | str = "auto",
    ) -> None:
        if max_prompt_length >= max_length:
            raise ValueError(
                f"data.max_prompt_length ({max_prompt_length}) must be smaller than data.max_length ({max_length})"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if use_chat_template == "auto":
            use_chat_template = has_template
        if use_chat_template and not has_template:
            raise ValueError("data.use_chat_template=true but the tokenizer has no chat template")
        self.use_chat_template = bool(use_chat_template)
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        probe = tokenizer("a").input_ids
        self.adds_bos = self.bos_id is not None and len(probe) > 0 and probe[0] == self.bos_id

    # -- text rendering --------------------------------------------------------------------------------------
    def _messages(self, prompt: Text) -> list[Message]:
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)

    def prompt_text(self, prompt: Text) -> str:
        """The prompt as the model sees it (chat template with the generation prompt, or raw text)."""
        if isinstance(prompt, list) and not self.use_chat_template:
            raise ValueError("a conversational prompt needs a tokenizer with a chat template")
        if not self.use_chat_template:
            return prompt  # type: ignore[return-value]
        return self.tokenizer.apply_chat_template(
            self._messages(prompt), tokenize=False, add_generation_prompt=True
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    # -- ids ---------------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: Text) -> list[int]:
        """Prompt token ids, BOS added once when the tokenizer uses one."""
        ids = self._encode(self.prompt_text(prompt))
        if self.adds_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return ids

    def completion_ids(self, prompt: Text, completion: Text) -> list[int]:
        """Completion token ids, ending with exactly one EOS."""
        if isinstance(completion, list):
            if not self.use_chat_template:
                raise ValueError("a conversational completion needs a tokenizer with a chat template")
            messages = self._messages(prompt)
            rendered_prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            rendered_full = self.tokenizer.apply_chat_template(messages + list(completion), tokenize=False)
            if rendered_full.startswith(rendered_prompt):
                text = rendered_full[len(rendered_prompt) :]
                eos = self.tokenizer.eos_token
                if eos and text.rstrip().endswith(eos):
                    # a newline after the final EOS is template decoration, not part of the answer
                    text = text.rstrip()
                ids = self._encode(text)
            else:
                # the template rewrites earlier turns (e.g. drops reasoning): fall back to the raw contents
                ids = self._encode("".join(message["content"] for message in completion))
        else:
            ids = self._encode(completion)
        if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
            ids.append(self.eos_id)
        return ids

    def __call__(self, pair: PreferencePair) -> TokenizedPair:
        prompt_ids = self.prompt_ids(pair.prompt)
        chosen_ids = self.completion_ids(pair.prompt, pair.chosen)
        rejected_ids = self.completion_ids(pair.prompt, pair.rejected)
        truncated = {"prompt": False, "chosen": False, "rejected": False}
        if len(prompt_ids) > self.max_prompt_length:
            keep_bos = self.adds_bos and prompt_ids[0] == self.bos_id
            tail = prompt_ids[-(self.max_prompt_length - int(keep_bos)) :]
            prompt_ids = [self.bos_id, *tail] if keep_bos else tail
            truncated["prompt"] = True
        room = self.max_length - len(prompt_ids)
        if len(chosen_ids) > room:
            chosen_ids = chosen_ids[:room]
            truncated["chosen"] = True
        if len(rejected_ids) > room:
            rejected_ids = rejected_ids[:room]
            truncated["rejected"] = True
        return TokenizedPair(pair.pair_id, prompt_ids, chosen_ids, rejected_ids, truncated)
