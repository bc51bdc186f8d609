"""Faults for the end-to-end tests, injected through the config (``+callbacks.fault._target_=tests.faults...``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    """Send this process ``signum`` once ``global_step`` reaches ``step`` (a real signal, as from Ctrl-C or kill)."""

    def __init__(self, step: int, signum: str = "SIGINT") -> None:
        self.step = step
        self.signum = signal.Signals[signum]
        self.sent = False

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed at or past the step (the printed resume command repeats this callback) is not signalled again
        self.sent = trainer.global_step >= self.step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class RaiseAtStep(L.Callback):
    """Fail in the training step after ``step`` optimiser steps (an exception in the middle of a batch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"injected fault at step {trainer.global_step}")


class RecordBatches(L.Callback):
    """Append each training batch's step and pair ids to ``path`` (one JSON line per batch)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import json

        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "pair_ids": list(batch["pair_ids"])}) + "\n")
