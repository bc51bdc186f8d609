"""Batched generation of answers, with the same prompt rendering as training.

Prompts are rendered by :class:`~prefalign.data.tokenization.PairTokenizer` (chat template with the generation
prompt, BOS once), left-padded and generated in batches. Sampling uses temperature 0.7 by default (the papers'
setting); every batch is seeded from ``seed`` and its position, so results do not depend on what ran before.
A temperature per prompt (MT-Bench's per-category temperatures, ``generation.temperature_by_category``) answers
the prompts of each temperature together, in prompt order, each group batched and seeded as above.
A multi-turn prompt made only of user turns is answered turn by turn, each answer becoming part of the next
turn's context; the last answer is returned.

Under a launcher (:mod:`prefalign.distributed`) each rank generates every ``N``-th batch, and the answers are
gathered in prompt order on every rank. The batches and their seeds are those of one process, so the answers
do not depend on the number of processes (on one kind of device: sampling kernels differ between devices).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from prefalign import distributed
from prefalign.data.records import Text
from prefalign.data.tokenization import PairTokenizer


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    pair_tokenizer: PairTokenizer,
    prompts: Sequence[Text],
    max_new_tokens: int = 512,
    temperature: float | Sequence[float] = 0.7,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    desc: str = "generating",
) -> list[str]:
    """One answer per prompt (greedy when the temperature is 0); under a launcher, every rank calls this and gets
    every answer.

    Args:
        temperature: one for all prompts, or one per prompt.
    """
    if not isinstance(temperature, (int, float)):
        temperatures = [float(t) for t in temperature]
        if len(temperatures) != len(prompts):
            raise ValueError(f"{len(temperatures)} temperatures for {len(prompts)} prompts: give one per prompt")
        answers: list[str] = [""] * len(prompts)
        for value in sorted(set(temperatures)):
            group = [i for i, t in enumerate(temperatures) if t == value]
            for i, answer in zip(group, generate_answers(
                model, pair_tokenizer, [prompts[i] for i in group], max_new_tokens, value, top_p, seed, batch_size,
                f"{desc} (T={value:g})",
            )):
                answers[i] = answer
        return answers
    distributed.init_from_env()
    # multi-turn prompts of user turns only are answered turn by turn
    turns = [len(p) if isinstance(p, list) and all(m["role"] == "user" for m in p) and len(p) > 1 else 0 for p in prompts]
    if any(turns):
        conversations: list[Text] = [
            [p[0]] if n else p for p, n in zip(prompts, turns)  # type: ignore[index]
        ]
        answers = _generate(model, pair_tokenizer, conversations, max_new_tokens, temperature, top_p, seed, batch_size, desc)
        for turn in range(1, max(turns)):
            active = [i for i, n in enumerate(turns) if n > turn]
            for i in active:
                conversations[i] = [  # type: ignore[assignment]
                    *conversations[i],
                    {"role": "assistant", "content": answers[i]},
                    prompts[i][turn],  # type: ignore[index]
                ]
            followups = _generate(
                model, pair_tokenizer, [conversations[i] for i in active], max_new_tokens, temperature, top_p,
                seed + 7919 * turn, batch_size, f"{desc} (turn {turn + 1})",
            )
            for i, answer in zip(active, followups):
                answers[i] = answer
        return answers
    return _generate(model, pair_tokenizer, list(prompts), max_new_tokens, temperature, top_p, seed, batch_size, desc)


def _generate(
    model: torch.nn.Module,
    pair_tokenizer: PairTokenizer,
    prompts: list[Text],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    batch_size: int,
    desc: str,
) -> list[str]:
    tokenizer = pair_tokenizer.tokenizer
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    local: list[list[str]] = []
    starts = distributed.share(range(0, len(prompts), batch_size))  # this rank's batches
    try:
        for start in tqdm(starts, desc=desc, leave=False, dynamic_ncols=True, disable=not distributed.is_main()):
            batch = [pair_tokenizer.prompt_ids(p)[-pair_tokenizer.max_prompt_length :] for p in prompts[start : start + batch_size]]
            longest = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), longest), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, ids in enumerate(batch):
                input_ids[row, longest - len(ids) :] = torch.tensor(ids)
                attention_mask[row, longest - len(ids) :] = 1
            # seeded by the batch's position: the same answers whichever rank generates it
            torch.manual_seed(seed + start)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            new_tokens = output[:, longest:]
            local.append([text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)])
    finally:
        model.train(was_training)
    return [answer for answers in distributed.gather_shares(local) for answer in answers]
