"""No secret given on the command line (or in a config) persists in a run folder.

Hydra writes the composed config and the command line's overrides into every run folder (``.hydra/config.yaml``,
``overrides.yaml``, ``hydra.yaml``; ``multirun.yaml`` for a sweep), and the run writes its own ``config.yaml``. A key
passed as ``+judge.client.api_key=sk-...`` would be kept in all of them, and copied wherever the run folder goes.
API keys are read from the environment instead (``api_key_env``, ``OPENAI_API_KEY`` by default).

:class:`RefuseSecrets` is a Hydra callback of every entry point (``conf/hydra/default.yaml``). It refuses a config
that holds a secret before Hydra creates the run or sweep folder, so nothing is written. Should a job start with
one all the same (a sweeper that sets it per job), the job's ``.hydra`` files are rewritten with ``<redacted>`` in
its place, the sweep's ``multirun.yaml`` too, and the job is refused.

A secret is the non-null value of a key named like one (``api_key``, ``*_api_key``, ``password``, ``secret``,
``access_token``, ``auth_token``, ``hf_token``), or a value shaped like a well-known key (``sk-...``, ``hf_...``,
``ghp_...``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from prefalign.atomic import atomic_write

SECRET_KEY = re.compile(r"(^|_)(api_?key|secret|password|passwd|access_token|auth_token|hf_token)$", re.IGNORECASE)
SECRET_VALUE = re.compile(r"^(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,})$")
REDACTED = "<redacted>"
# what an override writes to unset a key or leave it missing: no value, so no secret
NO_VALUE = ("", "null", "???")
# the files Hydra writes into a job's output subfolder
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")


class SecretInConfig(SystemExit):
    """A config (or the command line) holds a secret; the message names the keys, never the values.

    A ``SystemExit`` (exit status 1, the message on stderr): Hydra turns an ``Exception`` raised by a callback into a
    warning and runs the job all the same.
    """


def _walk(value: Any, key: str, found: dict[str, str]) -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            _walk(item, f"{key}.{name}" if key else str(name), found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{key}[{index}]", found)
    elif value is not None:
        text = str(value)
        if text in NO_VALUE:  # an unset or missing key holds nothing
            return
        if text.startswith("${"):  # an interpolation (${oc.env:...}) names where the value is, it is not the value
            return
        if SECRET_KEY.search(key.rsplit(".", 1)[-1]) or SECRET_VALUE.match(text):
            found[key] = text


def find_secrets(cfg: DictConfig) -> dict[str, str]:
    """The secrets of a composed config, ``{key: value}``: in its task keys, in the command line's overrides
    (``hydra.overrides.task``, including each value of a swept ``key=a,b``) and in a sweeper's ``params``."""
    found: dict[str, str] = {}
    task = OmegaConf.to_container(cfg, resolve=False)  # unresolved: a missing value (???) is no error here
    hydra = task.pop("hydra", None)
    _walk(task, "", found)
    if hydra is not None:
        overrides = list((hydra.get("overrides") or {}).get("task") or [])
        params = (hydra.get("sweeper") or {}).get("params") or {}
        pieces = [str(item).split("=", 1) for item in overrides if "=" in str(item)]
        pieces += [[str(key), str(value)] for key, value in dict(params).items()]
        for key, value in pieces:
            key = key.lstrip("+~")  # +key=, ++key=, ~key=: the key itself
            for one in value.split(","):  # a swept value is a comma-separated list
                _walk(one.strip().strip("'\""), key, found)
    return found


def refusal(secrets: dict[str, str], written: str) -> SecretInConfig:
    keys = ", ".join(sorted(secrets))
    return SecretInConfig(
        f"{keys}: a secret in the config or on the command line would be written into the run folder ({written}). "
        "Give API keys through the environment: the judge reads the variable named by its api_key_env "
        "(export OPENAI_API_KEY=...), and drop the override"
    )


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(key, secrets): _redact(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, secrets) for item in value]
    return value


def redact_file(path: Path, secrets: list[str]) -> bool:
    """Rewrite the YAML file ``path`` (atomically) with every occurrence of a secret in its keys and values replaced
    by ``<redacted>``; returns whether it held any."""
    import yaml

    if not path.is_file():
        return False
    text = path.read_text()
    if not any(secret in text or repr(secret)[1:-1] in text for secret in secrets):
        return False
    content = _redact(yaml.safe_load(text), secrets)
    atomic_write(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True)))
    return True


def redact_run_folder(output_dir: Path, hydra_subdir: str | None, secrets: list[str]) -> list[Path]:
    """Redact the secrets from what Hydra (and the run) wrote for one job: its ``.hydra`` files, its
    ``config.yaml``, and the sweep's ``multirun.yaml`` one folder up. Returns the files rewritten."""
    files = [output_dir / "config.yaml", output_dir.parent / "multirun.yaml"]
    if hydra_subdir:
        files += [output_dir / hydra_subdir / name for name in HYDRA_FILES]
    return [path for path in files if redact_file(path, secrets)]


class RefuseSecrets(Callback):
    """Hydra callback: refuse a run, sweep or job whose config holds a secret (module docstring)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        secrets = find_secrets(config)
        if secrets:
            raise refusal(secrets, "nothing was written")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.on_run_start(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        secrets = find_secrets(config)
        if not secrets:
            return
        output_dir = Path(config.hydra.runtime.output_dir)
        redacted = redact_run_folder(output_dir, config.hydra.output_subdir, sorted(set(secrets.values())))
        raise refusal(secrets, f"{', '.join(map(str, redacted)) or 'nothing there'} now show {REDACTED}")
