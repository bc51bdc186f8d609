"""Checkpoints a training run can really be resumed from: during training, on signals and on exceptions.

:class:`ResumableCheckpoint` is Lightning's ``ModelCheckpoint`` (``checkpoints/last.ckpt``) that also saves

- every ``every_n_train_steps`` optimiser steps, or else every ``every_n_minutes`` minutes of training;
- on SIGINT (Ctrl-C) and SIGTERM (a scheduler's kill), at the next optimiser-step boundary, after which the
  run stops with :class:`TrainingInterrupted` (exit code 130 / 143 from ``train.py``); a second Ctrl-C stops at
  once, without a new checkpoint;
- on any other exception, unless it came in the middle of a gradient accumulation (the accumulated gradients are
  not part of a checkpoint), on one of several processes (a save is a collective the others cannot join), before
  the first optimiser step, or with non-finite numbers (a ``FloatingPointError`` or non-finite weights: every
  resume would fail the same way): the last step checkpoint is kept then, and it has finite weights, since the
  module checks them after every step, before any checkpoint of it (``PreferenceModule.optimizer_step``).

Every checkpoint is written to a temporary file and renamed, so a kill during a save leaves the previous one. The
position in the epoch travels in the checkpoint through the training loader
(:class:`prefalign.data.sampling.ResumableLoader`), and the random-number generators' states are saved too, so a
run resumed with ``ckpt_path=`` ends with the metrics of an uninterrupted run.

A resume continues the same run: every checkpoint records the settings the run trains with (:func:`run_record`),
and a resume whose settings differ in anything that can change a result is refused, each differing key named
with both values, before any model loads (:func:`resume_changes`). Only the extensions in
:data:`RESUME_EXTENSIONS` may change; they are recorded (``resumed_with`` in ``metrics.json``).

A checkpoint is read back as data, never code: with ``torch.load(weights_only=True)`` (:func:`read_checkpoint`),
which reads the plain containers and tensors a Lightning checkpoint of a prefalign run holds and nothing else.

Once a run is finished (its policy and metrics written), its ``last.ckpt`` keeps only the run's progress and
settings, not the weights (they are in ``policy/``) nor the optimiser's moments, unless ``keep_training_state``
is set (:meth:`ResumableCheckpoint.run_finished`): a few kilobytes instead of 1.6 GB for the embedded 135M model.
A resume of such a run says it is complete; extending it (a higher ``trainer.max_epochs``) would need the
optimiser's moments and is refused, with the way out named (``training_state`` of :func:`read_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from prefalign.atomic import atomic_write
from prefalign.keys import NO_EFFECT, OPTIONAL_INPUTS, TRAINING_INPUTS, UNCHANGED_AT, plain

log = logging.getLogger(__name__)

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(BaseException):
    """Training stopped on a signal after saving a checkpoint (a ``BaseException``, like ``KeyboardInterrupt``,
    so that no ``except Exception`` swallows it).

    Attributes:
        signum: the signal.
        checkpoint: the checkpoint written.
        global_step: the optimiser steps done.
        exit_code: 130 for SIGINT, 143 for SIGTERM (128 + the signal number).
    """

    def __init__(self, signum: int, checkpoint: str, global_step: int) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        self.global_step = global_step
        self.exit_code = SIGNAL_EXIT_CODES.get(signum, 128 + int(signum))
        super().__init__(f"{signal.Signals(signum).name} at step {global_step}: checkpoint {checkpoint}")


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also saves during training, on signals and on exceptions (module docstring).

    Args:
        every_n_train_steps: save ``last.ckpt`` every this many optimiser steps (``None``: by time instead).
        every_n_minutes: with no step interval, save every this many minutes of training (``None``: only at the
            end of each epoch, on signals and on exceptions).
        save_on_signal: catch SIGINT and SIGTERM during ``fit`` and save before stopping.
        save_on_exception: save when training fails with an exception.
        keep_training_state: when the run finishes, keep the whole training state in ``last.ckpt`` (weights,
            optimiser moments, loader position), so that it can be extended later (a higher
            ``trainer.max_epochs``); ``False``: keep only the run's progress and settings (module docstring).
        kwargs: ``ModelCheckpoint``'s other arguments (``dirpath``, ``save_last``, ``save_top_k``, ...).

    Attributes:
        run_record: what every checkpoint records of the run's settings (:func:`run_record`), set by the training
            stage.
    """

    def __init__(
        self,
        every_n_train_steps: int | None = None,
        every_n_minutes: float | None = 10.0,
        save_on_signal: bool = True,
        save_on_exception: bool = True,
        keep_training_state: bool = False,
        **kwargs: Any,
    ) -> None:
        interval = None if every_n_train_steps or not every_n_minutes else timedelta(minutes=float(every_n_minutes))
        super().__init__(every_n_train_steps=every_n_train_steps, train_time_interval=interval, **kwargs)
        self.save_on_signal = save_on_signal
        self.save_on_exception = save_on_exception
        self.keep_training_state = keep_training_state
        self.run_record: dict[str, Any] | None = None
        self._signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}

    # -- signals -------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._signal = signum
        log.warning("%s received: saving a checkpoint at the next optimiser step, then stopping", signal.Signals(signum).name)

    def _install_handlers(self) -> None:
        if not self.save_on_signal or threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNAL_EXIT_CODES:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    # -- hooks ---------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Lightning hands the saved loader position back when it sets up the training data, but a scheduler
        # that asks for trainer.estimated_stepping_batches (ours) makes that happen before the checkpoint is
        # restored, and the position is never loaded. Load it now, before the first batch is drawn (the
        # training loader is lazy, see prefalign.data.sampling.ResumableLoader).
        trainer.fit_loop._load_combined_loader_states()
        self._signal = None
        self._install_handlers()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop._should_accumulate():
            return  # in the middle of a gradient accumulation a checkpoint would lose the accumulated gradients
        stop = self._signal if self._signal is not None else (signal.SIGTERM if trainer.received_sigterm else None)
        if trainer.world_size > 1:  # every rank stops at the same step, if any rank was signalled
            signalled = trainer.strategy.reduce_boolean_decision(stop is not None, all=False)
            stop = (stop or signal.SIGTERM) if signalled else None
        if stop is not None:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._restore_handlers()
            raise TrainingInterrupted(stop, self.last_model_path, trainer.global_step)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        # Lightning saves last.ckpt at the end only if nothing was saved before (with save_top_k=0): an interval
        # checkpoint would then be the run's last
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def run_finished(self) -> None:
        """Called by the training stage once the run's policy and metrics are written: unless
        ``keep_training_state``, its ``last.ckpt`` keeps the progress and settings only (:func:`drop_training_state`;
        not before, so that a run that fails to write its policy can still be resumed)."""
        if not self.keep_training_state and self.last_model_path:
            drop_training_state(self.last_model_path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()
        super().teardown(trainer, pl_module, stage)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        # a second Ctrl-C stops at once: it may have come in the middle of an optimiser step
        if isinstance(exception, (TrainingInterrupted, KeyboardInterrupt)) or not self.save_on_exception:
            return
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or not self.save_last:
            return
        if isinstance(exception, FloatingPointError) or not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            # non-finite numbers: a checkpoint of this state would fail the same way on every resume, while the
            # last one was saved after a step whose weights were checked (PreferenceModule.optimizer_step)
            log.warning("non-finite values at step %d: no new checkpoint (the last finite one: %s)",
                        trainer.global_step, self.last_model_path or "none")
            return
        if trainer.global_step == 0:  # no step done (a refusal in setup, say): a resume would start afresh anyway
            return
        if trainer.world_size > 1:
            # saving is a collective, and the other ranks are not here to join it: the last checkpoint stands
            log.warning("%s on one of %d processes: no new checkpoint (the last one: %s)",
                        type(exception).__name__, trainer.world_size, self.last_model_path or "none")
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        # the batches a resumed run counts as done: a batch that failed before the end of its step is redone
        done = progress.ready if progress.processed == progress.ready else progress.completed
        if done % trainer.accumulate_grad_batches and done < trainer.num_training_batches:
            log.warning(
                "%s in the middle of a gradient accumulation: no new checkpoint (the last one: %s)",
                type(exception).__name__,
                self.last_model_path or "none",
            )
            return
        loader = trainer.fit_loop._combined_loader.flattened[0] if trainer.fit_loop._combined_loader else None
        if hasattr(loader, "position"):
            loader.position = done
        # a batch that failed half-way is redone, and Lightning's restart then counts one logging step more than
        # a run that never failed (the learning-rate monitor would log at other steps): save the count it expects
        in_flight = int(progress.processed < progress.ready)
        trainer.fit_loop.epoch_loop._batches_that_stepped -= in_flight
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            trainer.fit_loop.epoch_loop._batches_that_stepped += in_flight
        log.warning("%s at step %d: saved %s", type(exception).__name__, trainer.global_step, self.last_model_path)

    # -- what a checkpoint holds, and how it is written --------------------------------------------------------

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # dropout and any other sampling in the model continue as in an uninterrupted run
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["prefalign_rng"] = rng
        if self.run_record is not None:
            checkpoint[RECORD_KEY] = self.run_record

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("prefalign_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Lightning's save, into a temporary file renamed over ``filepath`` (a kill mid-save keeps the old one)."""
        partial = f"{filepath}.partial"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            if os.path.isdir(partial) and os.path.isdir(filepath):  # a sharded (FSDP) checkpoint is a folder
                shutil.rmtree(filepath)
            os.replace(partial, filepath)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath


RECORD_KEY = "prefalign_run"
# what a finished run's last.ckpt keeps without its training state (keep_training_state=false)
FINISHED_KEEPS = ("epoch", "global_step", "pytorch-lightning_version", "loops", "hyper_parameters", RECORD_KEY)

# the settings a resume may change: the run's length, how it checkpoints and logs, and what cannot change a number
# (prefalign.keys.NO_EFFECT); anything else of the training inputs is the run itself (dotted prefixes)
RESUME_EXTENSIONS = ("trainer.max_epochs", "trainer.max_steps", "logger", "callbacks.checkpoint", *NO_EFFECT)


@dataclass
class SavedCheckpoint:
    """What a checkpoint says of its run, read without trusting it (:func:`read_checkpoint`).

    Attributes:
        path: the checkpoint.
        progress: ``{"epochs": completed epochs, "global_step": optimiser steps done}``.
        record: the run's settings as the checkpoint recorded them (:func:`run_record`); ``None`` for a
            checkpoint written before prefalign recorded them.
        training_state: whether it holds the weights and the optimiser's state (a finished run's checkpoint under
            ``keep_training_state=false`` does not).
    """

    path: Path
    progress: dict[str, int]
    record: dict[str, Any] | None = None
    training_state: bool = True


def _load_safely(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint file, with errors that name it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # torch raises an UnpicklingError, a RuntimeError, an EOFError, ... by cause
        text = str(error)
        if "Weights only load failed" in text:
            # the line that says what the file holds; not torch's advice to load it unsafely
            what = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
            raise ValueError(
                f"checkpoint {path}: refused, it holds objects that a safe load (torch.load weights_only=True) does "
                f"not read, which a prefalign checkpoint never holds; nothing of it was run. {what}"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise ValueError(
            f"checkpoint {path} cannot be read (truncated or not a checkpoint: {type(error).__name__}: {first}); "
            "resume from another checkpoint, or start the run again without ckpt_path"
        ) from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise ValueError(f"checkpoint {path}: not a Lightning checkpoint (no global_step)")
    return checkpoint


def read_checkpoint(path: str | os.PathLike) -> SavedCheckpoint:
    """A Lightning checkpoint's progress, recorded settings and kind, read as data (``weights_only=True``;
    the tensors are memory-mapped, not read). A sharded checkpoint (a folder) is read through its ``meta.pt``.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: the checkpoint cannot be read safely (truncated, not a checkpoint, or holding objects other
            than containers and tensors); the message names it.
    """
    path = Path(path)
    if path.is_dir() and (path / "meta.pt").is_file():
        checkpoint = _load_safely(path / "meta.pt")
        training_state = True  # a sharded checkpoint's weights and optimiser state are in its shards
    elif path.is_file():
        checkpoint = _load_safely(path)
        training_state = "state_dict" in checkpoint and "optimizer_states" in checkpoint
    else:
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint")
    epochs = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("completed")
    progress = {"epochs": int(epochs if epochs is not None else checkpoint.get("epoch", 0)), "global_step": int(checkpoint.get("global_step", 0))}
    record = checkpoint.get(RECORD_KEY)
    return SavedCheckpoint(path, progress, record if isinstance(record, dict) else None, training_state)


def checkpoint_progress(path: str | os.PathLike) -> dict[str, int]:
    """The epochs completed and optimiser steps done of a Lightning checkpoint (:func:`read_checkpoint`).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: it cannot be read safely (the message names it).
    """
    return read_checkpoint(path).progress


def run_record(cfg: Any, resumed_with: dict[str, list[Any]] | None = None, data_fingerprint: str | None = None) -> dict[str, Any]:
    """What a checkpoint records of its run: the resolved training inputs (:data:`prefalign.keys.TRAINING_INPUTS`),
    the logger and the checkpoint settings, as plain data; the extensions of earlier resumes; and the content
    fingerprint of the training pairs (a data file rewritten under the same name is other data)."""
    settings = {
        name: plain(cfg.get(name)) for name in TRAINING_INPUTS if cfg.get(name) is not None or name not in OPTIONAL_INPUTS
    }
    settings["logger"] = plain(cfg.get("logger"))
    checkpoint = plain((cfg.get("callbacks") or {}).get("checkpoint")) or {}
    # where the checkpoints go is the run folder's business (a run may be resumed into another folder)
    settings["callbacks"] = {"checkpoint": {key: value for key, value in checkpoint.items() if key != "dirpath"}}
    return {"settings": settings, "resumed_with": dict(resumed_with or {}), "data_fingerprint": data_fingerprint}


def check_resumed_data(saved: SavedCheckpoint, data_fingerprint: str) -> None:
    """Refuse a resume whose training pairs are not the ones the checkpoint's run trained on (same settings, but a
    data file with other content).

    Raises:
        ValueError: the fingerprints differ (both named).
    """
    recorded = (saved.record or {}).get("data_fingerprint")
    if recorded is not None and recorded != data_fingerprint:
        raise ValueError(
            f"ckpt_path={saved.path}: a resume continues the same run, but the training pairs are not the run's "
            f"(content fingerprint {recorded} in the checkpoint, {data_fingerprint} now: the data files changed). "
            "Resume with the run's data, or start a new run in another folder"
        )


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


class _Absent:
    def __repr__(self) -> str:
        return "(not set)"


ABSENT = _Absent()  # a setting one side does not have


def resume_changes(saved: SavedCheckpoint, cfg: Any) -> dict[str, list[Any]]:
    """Compare the settings a checkpoint recorded with this run's: a resume continues the same run.

    Returns:
        The extensions this resume makes (keys of :data:`RESUME_EXTENSIONS`), with those of earlier resumes:
        ``{dotted key: [the run's first value, the value now]}``.

    Raises:
        ValueError: any other setting differs (each named with the checkpoint's value and this run's).
    """
    if saved.record is None:
        log.warning(
            "%s records no settings (written by an older prefalign): this resume's settings cannot be compared with "
            "the run's; make sure they are the same", saved.path
        )
        return {}
    before = _flatten(saved.record.get("settings") or {})
    now = _flatten(run_record(cfg)["settings"])
    refused, extended = [], {}
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key, ABSENT), now.get(key, ABSENT)
        # an option added to prefalign after the checkpoint was written is the same run at its old-result value
        old = UNCHANGED_AT.get(key, old) if old is ABSENT else old
        new = UNCHANGED_AT.get(key, new) if new is ABSENT else new
        if old == new:
            continue
        if any(key == allowed or key.startswith(f"{allowed}.") for allowed in RESUME_EXTENSIONS):
            extended[key] = [None if old is ABSENT else old, None if new is ABSENT else new]
        else:
            refused.append(f"  {key}: {old!r} in the checkpoint, {new!r} now")
    if refused:
        raise ValueError(
            f"ckpt_path={saved.path}: a resume continues the same run, and these settings differ from the run's:\n"
            + "\n".join(refused)
            + "\nResume with the run's settings, or start a new run in another folder (model.init_from=<run> starts "
            f"from its policy). A resume may change only {', '.join(RESUME_EXTENSIONS[:4])} and settings that "
            "cannot change a number"
        )
    merged = {key: list(value) for key, value in (saved.record.get("resumed_with") or {}).items()}
    for key, (old, new) in extended.items():
        first = merged[key][0] if key in merged else old
        merged[key] = [first, new]
    return {key: value for key, value in merged.items() if value[0] != value[1]}


def drop_training_state(path: str | os.PathLike) -> None:
    """Rewrite a finished run's checkpoint with its progress and settings only (:data:`FINISHED_KEEPS`): its
    weights are the run's ``policy/``, and the optimiser's state is what takes most of the disk."""
    path = Path(path)
    if not path.is_file():  # a sharded checkpoint (a folder) is left whole
        log.info("%s is a sharded checkpoint: kept whole", path)
        return
    checkpoint = _load_safely(path)
    kept = {key: checkpoint[key] for key in FINISHED_KEEPS if key in checkpoint}
    atomic_write(path, lambda tmp: torch.save(kept, tmp))
    log.info(
        "%s: the run is finished, its checkpoint keeps its progress and settings only (the weights are in "
        "policy/; callbacks.checkpoint.keep_training_state=true keeps everything, to extend the run later)", path
    )


def training_complete(progress: dict[str, int], trainer: Any) -> bool:
    """Whether a run at ``progress`` (:func:`checkpoint_progress`) has nothing left to do under ``trainer``'s length."""
    max_steps = trainer.get("max_steps")
    if max_steps is not None and int(max_steps) >= 0:
        if progress["global_step"] >= int(max_steps):
            return True
    max_epochs = trainer.get("max_epochs")
    return max_epochs is not None and int(max_epochs) >= 0 and progress["epochs"] >= int(max_epochs)
