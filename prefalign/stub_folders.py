"""No stub run folders: a run that fails before writing anything of its own leaves no folder behind.

Hydra creates the run folder, its ``.hydra/`` and the log file before the entry point runs, so a run that stops at
once (a missing ``scores=``, a bad value) would leave ``outputs/<task>/<time>/`` holding only those, one more
folder to tell apart from real runs. :class:`RemoveStubFolder` (a Hydra callback of every entry point,
``conf/hydra/default.yaml``) removes such a folder when its job fails; the error itself is printed as before. A
folder with anything else in it (checkpoints, results, a previous run's files) is kept untouched.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


def stub_entries(config: Any) -> set[str]:
    """The names a run folder holds before its run has done anything: Hydra's ``.hydra/`` and ``<job>.log`` and the
    resolved ``config.yaml`` a run writes first (a run removes its folder lock when it ends)."""
    hydra = config.hydra
    return {str(hydra.output_subdir or ".hydra"), f"{hydra.job.name}.log", "config.yaml"}


def is_stub(folder: Path, config: Any) -> bool:
    """Whether ``folder`` holds nothing but :func:`stub_entries`."""
    from prefalign.folder_lock import LOCK_NAME

    allowed = stub_entries(config)
    # a lock file left there belongs to another run (a run removes its own when it ends): that run's folder stays,
    # whatever it holds yet
    if (folder / LOCK_NAME).exists():
        return False
    return folder.is_dir() and all(entry.name in allowed for entry in folder.iterdir())


class RemoveStubFolder(Callback):
    """Hydra callback: when a job fails, remove its run folder if that holds only what Hydra and the run's first
    step wrote (:func:`is_stub`)."""

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.FAILED:
            return
        folder = Path(str(config.hydra.runtime.output_dir))
        if not is_stub(folder, config):
            return
        try:
            shutil.rmtree(folder)
        except OSError as error:  # the error of the run matters, not this one
            log.debug("stub folder %s not removed: %s", folder, error)
