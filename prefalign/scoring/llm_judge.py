"""The LLM-judge margin: the papers' "GPT-4 score" baseline on data that ships no ratings.

TIF paper, baselines ("GPT4": select by the GPT-4 rating margin of UltraFeedback); BeeS paper, external margins.
Where the data carries annotator ratings (UltraFeedback's ``score_chosen`` / ``score_rejected``) the
``annotator`` score reads them; this score asks an LLM judge behind any OpenAI-compatible API (OpenAI, vLLM,
llama.cpp) for them instead: each response gets a 1-10 rating with the evaluation judge's single-answer prompt
(:func:`prefalign.evaluation.judges.single_conversation`), and the pair's score is
``rating(y_w) - rating(y_l)``. Requests go through the judges' client (concurrency limit, retries with backoff,
every reply cached in SQLite, so a rerun sends no request). A reply without a parsable rating gives the pair a
missing (NaN) score: it is counted, logged and reported in ``scores_summary.json``, never replaced by a number,
and a selection rule that reads the column names the pairs it cannot rank.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from prefalign.data.records import text_of
from prefalign.evaluation.client import ChatClient
from prefalign.evaluation.judges import parse_rating, single_conversation
from prefalign.scoring.base import Scorer, ScoringContext
from prefalign.scoring.margins import batch_pairs

log = logging.getLogger(__name__)


class LLMJudgeScorer(Scorer):
    """``llm_judge``: ``rating(chosen) - rating(rejected)``, each a 1-10 rating by an LLM judge.

    Args:
        client: the OpenAI-compatible chat client (base URL, model, key, concurrency, retries, reply cache).
    """

    name = "llm_judge"
    label = "LLM judge"

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.unparsable = 0

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        pairs = batch_pairs(context, batch)
        conversations = [single_conversation(pair.prompt, text_of(pair.chosen)) for pair in pairs]
        conversations += [single_conversation(pair.prompt, text_of(pair.rejected)) for pair in pairs]
        # only replies that parse into a rating are cached: a transient fault is asked again by the next run
        replies = self.client.complete_many(
            conversations, desc=f"{self.name} ratings", accept=lambda reply: parse_rating(reply) is not None
        )
        ratings = [parse_rating(reply) for reply in replies]
        chosen, rejected = ratings[: len(pairs)], ratings[len(pairs) :]
        margins = []
        for pair, good, bad in zip(pairs, chosen, rejected):
            if good is None or bad is None:
                self.unparsable += (good is None) + (bad is None)
                log.debug("%s: no parsable rating for pair %s", self.name, pair.pair_id)
                margins.append(float("nan"))
            else:
                margins.append(good - bad)
        return torch.tensor(margins, dtype=torch.float64)

    def release(self) -> None:
        if self.unparsable:
            log.warning("%s: %d judge replies had no parsable rating; those pairs have no score (NaN)", self.name, self.unparsable)
