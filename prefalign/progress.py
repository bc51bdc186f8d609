"""Progress lines in the log when nobody watches a progress bar.

Lightning's progress bar redraws one terminal line; under ``nohup`` or ``> train.log`` it writes nothing useful, and
Hydra's ``<run>/train.log`` gets no per-step lines. :class:`ProgressLog` logs one line (step, loss, pairs per
second, time left) through the ``prefalign`` logger every few steps or seconds, so the lines reach the console
handler and Hydra's log file alike.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


def output_is_terminal() -> bool:
    """Whether both standard streams are terminals (a progress bar is then visible and enough)."""
    return all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressLog(L.Callback):
    """Log ``step 40/300 (13%) | loss 0.6712 | 5.3 pairs/s | 0:41 elapsed, 4:32 left`` during training.

    Args:
        every_n_steps: a line every this many optimiser steps (``null``: by time only).
        every_n_seconds: a line when this many seconds passed since the last one (``null``: by steps only).
        enabled: ``auto``: only when standard output or error is not a terminal (a file, a pipe, ``nohup``);
            ``true``: always; ``false``: never.
    """

    def __init__(self, every_n_steps: int | None = 50, every_n_seconds: float | None = 30.0, enabled: bool | str = "auto") -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"callbacks.progress_log.enabled={enabled!r}: use auto, true or false")
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self.active = (not output_is_terminal()) if enabled == "auto" else bool(enabled)
        self._started = 0.0
        self._last_time = 0.0
        self._last_step = -1
        self._first_step = 0
        self._pairs = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = self._last_time = time.monotonic()
        self._last_step = self._first_step = trainer.global_step  # a resumed run counts from where it resumed
        self._pairs = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.active or not trainer.is_global_zero:
            return
        pair_ids = batch.get("pair_ids") if isinstance(batch, dict) else None
        self._pairs += len(pair_ids) if pair_ids is not None else 0
        step, now = trainer.global_step, time.monotonic()
        if step == self._last_step:  # inside gradient accumulation: lines only after an optimiser step
            return
        due_by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        due_by_time = self.every_n_seconds is not None and now - self._last_time >= self.every_n_seconds
        if due_by_steps or due_by_time:
            self._last_time = now
            log.info("%s", self.line(trainer, step, now))
        self._last_step = step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active and trainer.is_global_zero:
            log.info("%s (done)", self.line(trainer, trainer.global_step, time.monotonic()))

    def line(self, trainer: L.Trainer, step: int, now: float) -> str:
        """One progress line at optimiser step ``step``."""
        elapsed = now - self._started
        total = trainer.estimated_stepping_batches
        known_total = isinstance(total, int) or (isinstance(total, float) and total != float("inf"))
        parts = [f"step {step}/{int(total)} ({100 * step / max(int(total), 1):.0f}%)" if known_total else f"step {step}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if elapsed > 0:
            parts.append(f"{self._pairs / elapsed:.1f} pairs/s")
        timing = f"{_duration(elapsed)} elapsed"
        if known_total and step > self._first_step:
            timing += f", {_duration(elapsed / (step - self._first_step) * max(int(total) - step, 0))} left"
        parts.append(timing)
        return " | ".join(parts)
