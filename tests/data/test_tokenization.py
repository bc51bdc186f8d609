"""Chat template, completion-only tokens, BOS/EOS handling and the truncation policy."""

import pytest

from prefalign.data.collate import collate_pairs
from prefalign.data.records import PreferencePair
from prefalign.data.tokenization import PairTokenizer


def test_string_prompt_gets_the_chat_template_with_generation_prompt(tokenizer):
    pair_tokenizer = PairTokenizer(tokenizer)
    ids = pair_tokenizer.prompt_ids("What is 2 + 3?")
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's template adds its default system prompt
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_completion_ends_with_exactly_one_eos(tokenizer):
    pair_tokenizer = PairTokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    ids = pair_tokenizer.completion_ids("q", "The answer is 5.")
    assert ids[-1] == eos and ids.count(eos) == 1
    assert tokenizer.decode(ids[:-1]) == "The answer is 5."
    # a completion that already carries the EOS text does not get a second one
    again = pair_tokenizer.completion_ids("q", "The answer is 5.<|im_end|>")
    assert again == ids


def test_conversational_completion_uses_the_template_turn(tokenizer):
    pair_tokenizer = PairTokenizer(tokenizer)
    prompt = [{"role": "user", "content": "Hi"}]
    ids = pair_tokenizer.completion_ids(prompt, [{"role": "assistant", "content": "Hello there"}])
    # the turn body and its end marker, without the template's trailing newline
    assert tokenizer.decode(ids) == "Hello there<|im_end|>"
    # and the prompt + completion equals the template rendering of the whole conversation (minus that newline)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "Hello there"}], tokenize=False)
    assert tokenizer.decode(pair_tokenizer.prompt_ids(prompt) + ids) == full.rstrip()


def test_raw_text_without_chat_template(tokenizer):
    pair_tokenizer = PairTokenizer(tokenizer, use_chat_template=False)
    assert tokenizer.decode(pair_tokenizer.prompt_ids("TL;DR:")) == "TL;DR:"
    with pytest.raises(ValueError, match="chat template"):
        pair_tokenizer.prompt_ids([{"role": "user", "content": "x"}])


class CharTokenizer:
    """A character-level tokenizer that adds BOS (id 1) like Llama's, and whose template writes BOS itself."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0
    bos_token, eos_token = "^", "$"

    def __init__(self, template_writes_bos: bool) -> None:
        self.chat_template = "yes"
        self.template_writes_bos = template_writes_bos

    def __call__(self, text, add_special_tokens=True):
        ids = [1 if ch == "^" else 2 if ch == "$" else ord(ch) for ch in text]
        if add_special_tokens:
            ids = [1, *ids]
        return type("Encoding", (), {"input_ids": ids})()

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        body = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return ("^" if self.template_writes_bos else "") + body + ("<assistant>" if add_generation_prompt else "")


@pytest.mark.parametrize("template_writes_bos", [True, False])
def test_bos_is_added_once(template_writes_bos):
    pair_tokenizer = PairTokenizer(CharTokenizer(template_writes_bos))
    ids = pair_tokenizer.prompt_ids("hi")
    assert ids[0] == 1 and ids.count(1) == 1


def test_truncation_policy(tokenizer):
    pair_tokenizer = PairTokenizer(tokenizer, max_length=40, max_prompt_length=30)
    long_prompt = "word " * 60 + "QUESTION?"
    pair = PreferencePair("p", long_prompt, "short", "a much longer answer " * 10)
    tokens = pair_tokenizer(pair)
    # the prompt keeps its end (the question and the generation prompt)
    assert len(tokens.prompt_ids) == 30
    assert tokenizer.decode(tokens.prompt_ids).endswith("QUESTION?<|im_end|>\n<|im_start|>assistant\n")
    # the short completion is intact, the long one keeps its beginning and fits max_length
    assert tokenizer.decode(tokens.chosen_ids) == "short<|im_end|>"
    assert len(tokens.prompt_ids) + len(tokens.rejected_ids) == 40
    assert tokenizer.decode(tokens.rejected_ids).startswith("a much longer answer")
    assert tokens.truncated == {"prompt": True, "chosen": False, "rejected": True}


def test_invalid_lengths(tokenizer):
    with pytest.raises(ValueError, match="max_prompt_length"):
        PairTokenizer(tokenizer, max_length=10, max_prompt_length=10)


def test_collate_left_pads_prompts_and_right_pads_completions():
    items = [
        dict(pair_id="a", index=0, prompt_ids=[5, 6, 7], chosen_ids=[8], rejected_ids=[9, 9]),
        dict(pair_id="b", index=1, prompt_ids=[5], chosen_ids=[8, 8, 8], rejected_ids=[9]),
    ]
    batch = collate_pairs(items, pad_id=0)
    assert batch["prompt_input_ids"].tolist() == [[5, 6, 7], [0, 0, 5]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["chosen_input_ids"].tolist() == [[8, 0, 0], [8, 8, 8]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["pair_ids"] == ["a", "b"]
