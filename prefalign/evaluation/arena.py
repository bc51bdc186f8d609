"""Arena-Hard as arena-hard-auto (``lmarena/arena-hard-auto``, the v0.1 protocol of its 500 prompts) scores it.

The judge writes its own answer to the prompt first, then compares the two assistants' answers with it and ends
with one of five verdicts: ``[[A>>B]]`` (A much better), ``[[A>B]]``, ``[[A=B]]``, ``[[B>A]]``, ``[[B>>A]]``.

* **Parsing** (arena-hard-auto's ``gen_judgment.get_score``): every ``[[...]]`` label in the judgement counts; no
  label at all means "ask the judge to finish its judgement" (a follow-up turn, up to
  ``number_of_judgment_attempts``), several *different* labels mean unparsable (no retry), the same label
  repeated is that label. Spaces inside the brackets are ignored here (``[[A > B]]`` is ``[[A>B]]``), which
  arena-hard-auto's regular expression would not match; a label other than the five (``[[A<B]]``, ``[[A]]``)
  is unparsable, as its ``show_result.py`` (v0.1) gives such a game no weight.
* **Battles** (``show_result.get_battles_from_row``, v0.1): every prompt is judged in two games, the answers
  shown in both orders; each game becomes battles for the answer being scored: a weak verdict or a tie one
  battle, a strong verdict ``strong_weight`` (3) identical battles; an unparsable game none (the other game
  still counts). A battle scores 1 (win), 0.5 (tie) or 0 (loss).
* **Win rate**: arena-hard-auto fits a Bradley-Terry model to the battles and reports the predicted win rate
  against the baseline; with two models (policy and baseline) the maximum-likelihood fit predicts exactly the
  share of battles won, ties counting half, which is what :func:`battle_win_rate` computes.
* **Interval**: ``num_rounds`` (100) bootstrap resamples of the *battles* (all battle rows, a strong verdict's
  three copies resampled independently, as ``battles.sample(frac=1.0, replace=True)`` does), the 2.5 and 97.5
  percentiles of the resampled win rates.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefalign.evaluation.metrics import bootstrap

# each verdict from the point of view of the answer shown first (A): its battle score and whether it is strong
VERDICTS: dict[str, tuple[float, bool]] = {
    "A>>B": (1.0, True),
    "A>B": (1.0, False),
    "A=B": (0.5, False),
    "B>A": (0.0, False),
    "B>>A": (0.0, True),
}
# a candidate label: [[...]] made only of A, B, <, >, = (and spaces, ignored)
LABEL = re.compile(r"\[\[\s*([AB<>=][AB<>=\s]*)\]\]")


def verdict_labels(judgment: str) -> list[str]:
    """Every ``[[...]]`` verdict label in a judgement, spaces removed, in order."""
    return [re.sub(r"\s+", "", label) for label in LABEL.findall(judgment)]


def parse_verdict(judgment: str) -> str | None:
    """The judgement's verdict (one of :data:`VERDICTS`), or ``None``: no label, several different labels, or a
    label other than the five (module docstring)."""
    labels = set(verdict_labels(judgment))
    if len(labels) != 1:
        return None
    (label,) = labels
    return label if label in VERDICTS else None


def needs_another_attempt(judgment: str) -> bool:
    """Whether arena-hard-auto asks the judge to go on: the judgement holds no verdict label at all (conflicting
    labels end the judgement as unparsable)."""
    return not verdict_labels(judgment)


def game_battles(verdict: str | None, scored_first: bool, strong_weight: int = 3) -> list[float]:
    """The battles one game gives the answer being scored.

    Args:
        verdict: the game's verdict, or ``None`` (unparsable: no battle).
        scored_first: whether the scored answer was shown first (as A) in this game.
        strong_weight: battles a strong verdict (``>>``) counts for.
    """
    if verdict is None:
        return []
    score, strong = VERDICTS[verdict]
    if not scored_first:
        score = 1.0 - score
    return [score] * (strong_weight if strong else 1)


def battle_win_rate(battles: Sequence[Sequence[float]], resamples: int = 100, seed: int = 0) -> dict[str, Any]:
    """Win rate in percent over all battles, with a bootstrap interval over battles (module docstring).

    Args:
        battles: each prompt's battles (scores 1, 0.5, 0 for the scored answer); empty for a prompt with no
            parsable game.
        resamples: bootstrap resamples of the battles (arena-hard-auto's ``num_rounds``).
        seed: the resampling seed.

    Returns:
        ``value``, ``ci_low``, ``ci_high`` (percent), ``n`` (prompts with a battle), ``battles`` (their number),
        ``wins`` / ``ties`` / ``losses`` (prompts whose battles the scored answer mostly won, split evenly, or
        mostly lost), ``unparsable`` (prompts without a battle) and ``resampled`` (what the interval resamples).
    """
    flat = [100 * score for item in battles for score in item]
    result = bootstrap(flat, resamples=resamples, seed=seed)
    shares = [float(np.mean(item)) for item in battles if len(item)]
    result.update(
        {
            "n": len(shares),
            "battles": len(flat),
            "wins": int(sum(share > 0.5 for share in shares)),
            "ties": int(sum(share == 0.5 for share in shares)),
            "losses": int(sum(share < 0.5 for share in shares)),
            "unparsable": len(battles) - len(shares),
            "resampled": "battles",
        }
    )
    return result


@dataclass(frozen=True)
class Wording:
    """What the judge is told: the system prompt, the user templates (``{question_1}``, ``{answer_1}``,
    ``{answer_2}``, each a user message) and where they come from."""

    name: str
    system_prompt: str
    prompt_templates: tuple[str, ...]
    source: str
    sha256: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "sha256": self.sha256}


# prefalign's own wording of the protocol (not arena-hard-auto's text: judge.arena_hard_config gives that)
PREFALIGN_SYSTEM = """You compare the answers of two AI assistants, Assistant A and Assistant B, to one user \
prompt, and decide which is better.

Work in this order. First, answer the user prompt yourself, in full, before you weigh either assistant's \
answer. Second, check each assistant's answer against yours and against the facts: name every error and say \
what would be correct. Third, weigh how well each answer serves the user: whether it does what was asked (or, \
when the request is truly ambiguous, asks what is meant instead of guessing), whether everything in it bears on \
the request, and whether it is clear without padding. Take originality into account where the task calls for \
it, and mention anything important that both answers leave out. Neither the order of the answers nor their \
length may sway you.

End with your verdict, exactly one of these labels:
[[A>>B]] when A is significantly better,
[[A>B]] when A is slightly better,
[[A=B]] when they are about equally good,
[[B>A]] when B is slightly better,
[[B>>A]] when B is significantly better."""

PREFALIGN_TEMPLATE = """[User prompt]
{question_1}

[Start of Assistant A's answer]
{answer_1}
[End of Assistant A's answer]

[Start of Assistant B's answer]
{answer_2}
[End of Assistant B's answer]"""

PREFALIGN_WORDING = Wording(
    name="prefalign-arena-hard",
    system_prompt=PREFALIGN_SYSTEM,
    prompt_templates=(PREFALIGN_TEMPLATE,),
    source="prefalign's own wording of arena-hard-auto's protocol (prefalign.evaluation.arena.PREFALIGN_SYSTEM)",
)

# the follow-up turn of a judgement that ended without a verdict label (prefalign's wording)
FOLLOW_UP = "Your judgment ended without a verdict. Finish it, and end with one of the five verdict labels."

# where to get the authors' wording, named in the errors about it
CONFIG_SOURCE = (
    "arena-hard-auto's judge config: https://github.com/lmarena/arena-hard-auto, file config/judge_config.yaml "
    "(the arena-hard-v0.1 settings)"
)


def load_judge_config(path: str | os.PathLike) -> Wording:
    """The ``system_prompt`` and ``prompt_template`` of arena-hard-auto's ``config/judge_config.yaml``.

    Raises:
        FileNotFoundError: no such file (the message says where to get it).
        ValueError: a file that is not YAML, or lacks either key (file and key named).
    """
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"judge.arena_hard_config={path}: no such file; it should be {CONFIG_SOURCE}")
    raw = path.read_bytes()
    try:
        config = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not YAML ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a mapping of settings ({CONFIG_SOURCE})")
    system_prompt = config.get("system_prompt")
    if not isinstance(system_prompt, str) or not system_prompt.strip():
        raise ValueError(f"{path}: missing key 'system_prompt' (a string), as {CONFIG_SOURCE} has it")
    templates = config.get("prompt_template")
    if isinstance(templates, str):
        templates = [templates]
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise ValueError(f"{path}: missing key 'prompt_template' (a list of strings), as {CONFIG_SOURCE} has it")
    return Wording(
        name=f"arena-hard-auto:{config.get('bench_name', path.name)}",
        system_prompt=system_prompt,
        prompt_templates=tuple(templates),
        source=str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
