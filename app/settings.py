"""Every environment variable the app reads, read here and only here: :data:`VARIABLES` names
each with its type, default and meaning; :func:`read` parses one (a malformed value raises
:class:`SettingError` naming the variable and what it accepts); :meth:`Settings.from_env` reads
them all at once, with the server's caps (:class:`app.limits.Limits`).

A leaf module (standard library only), so any engine module may import it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .limits import Limits

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class SettingError(ValueError):
    """An environment variable with a value the app cannot use; the message names it."""


@dataclass(frozen=True)
class Variable:
    """One environment variable: ``kind`` is int, float, flag, path or text; unset or empty means ``default``."""

    name: str
    kind: str
    default: Any
    meaning: str
    minimum: float | None = None


VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable("INDISTILL_PUBLIC", "flag", None, "public mode (unset: on a Hugging Face Space, else off)"),
    Variable("SPACE_ID", "text", None, "set by Hugging Face on a Space"),
    Variable("INDISTILL_RUNS", "path", Path("runs"), "the server's runs folder"),
    Variable("INDISTILL_MAX_JOBS", "int", 1, "runs training at once", minimum=1),
    Variable("INDISTILL_MAX_QUEUE", "int", 30, "runs waiting in the queue (public mode)", minimum=0),
    Variable("INDISTILL_MAX_RUNS_PER_ADDRESS", "int", 2, "live runs of one client address (public mode)", minimum=1),
    Variable("INDISTILL_MAX_KEPT_PER_ADDRESS", "int", 20,
             "run folders kept per client address, the oldest ended deleted first (public mode)", minimum=1),
    Variable("INDISTILL_MAX_QUEUE_MINUTES_PER_ADDRESS", "float", 30.0,
             "estimated minutes of queued work of one client address (public mode)", minimum=0),
    Variable("INDISTILL_SHARING", "flag", True, "join identical live runs and reuse stored units"),
    Variable("INDISTILL_TRUST_PROXY", "flag", None,
             "read the client address from X-Forwarded-For (unset: on a Space only)"),
    Variable("INDISTILL_MCP", "flag", None, "serve the API as MCP tools (unset: locally when installed)"),
    Variable("INDISTILL_ANALYTICS", "flag", False, "Gradio's usage analytics on a public server"),
    Variable("INDISTILL_DATA_ROOT", "path", None, "a folder of datasets a public server offers"),
    Variable("INDISTILL_CACHE", "path", None, "the decoded-dataset cache (unset: ~/.cache/indistill)"),
    Variable("INDISTILL_TRAIN_THREADS", "int", 0, "CPU threads a training uses (0: every core)", minimum=0),
    Variable("INDISTILL_WORKER", "text", None,
             "where a run trains: process (a worker process) or thread (unset: process in public mode, else thread)"),
    Variable("INDISTILL_DATA_DIR", "path", None, "the CIFAR-10 JPEG copy the CLI and exports use"),
    Variable("INDISTILL_REFERENCE_MODELS", "path", None,
             "the authors' released models (unset: ../shared/reference/models beside the checkout)"),
)}

ACCEPTED = {"int": "a whole number", "float": "a number", "flag": "1 or 0 (true/false, yes/no, on/off)",
            "path": "a path", "text": "text"}


def parse(variable: Variable, text: str | None) -> Any:
    """The typed value of ``text`` for ``variable``; unset or empty gives its default."""
    if text is None or not text.strip():
        return variable.default
    value: Any = text.strip()
    try:
        if variable.kind == "int":
            value = int(value)
        elif variable.kind == "float":
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        elif variable.kind == "flag":
            if value.lower() not in TRUE + FALSE:
                raise ValueError
            value = value.lower() in TRUE
        elif variable.kind == "path":
            value = Path(value).expanduser()
    except ValueError:
        raise SettingError(f"{variable.name}={text!r} is not {ACCEPTED[variable.kind]}: {variable.name} is "
                           f"{variable.meaning}; unset it for the default ({variable.default})") from None
    if variable.minimum is not None and value < variable.minimum:
        raise SettingError(f"{variable.name}={text!r} is below {variable.minimum:g}: {variable.name} is "
                           f"{variable.meaning}; unset it for the default ({variable.default})")
    return value


def read(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The typed value of the variable ``name`` (one of :data:`VARIABLES`) in ``env`` (default: the process's)."""
    return parse(VARIABLES[name], (os.environ if env is None else env).get(name))


def public(env: Mapping[str, str] | None = None) -> bool:
    """Public mode: ``INDISTILL_PUBLIC`` if set, else on a Space (``SPACE_ID``)."""
    flag = read("INDISTILL_PUBLIC", env)
    return bool(read("SPACE_ID", env)) if flag is None else flag


def behind_proxy(env: Mapping[str, str] | None = None) -> bool:
    """Trust ``X-Forwarded-For``: ``INDISTILL_TRUST_PROXY`` if set, else on a Space."""
    flag = read("INDISTILL_TRUST_PROXY", env)
    return bool(read("SPACE_ID", env)) if flag is None else flag


def data_dir(env: Mapping[str, str] | None = None) -> str | None:
    """``INDISTILL_DATA_DIR`` as text (the CLI's and the report's default ``--data-dir``), or None."""
    path = read("INDISTILL_DATA_DIR", env)
    return str(path) if path else None


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The decoded-dataset cache: ``INDISTILL_CACHE``, else ~/.cache/indistill."""
    return read("INDISTILL_CACHE", env) or Path.home() / ".cache" / "indistill"


@dataclass(frozen=True)
class Settings:
    """The whole environment of the app, typed: what :data:`VARIABLES` read, plus the server's caps."""

    public: bool
    runs_root: Path
    sharing: bool
    behind_proxy: bool
    mcp: bool | None
    analytics: bool
    data_root: Path | None
    cache_dir: Path
    train_threads: int
    data_dir: Path | None
    reference_models: Path | None
    limits: "Limits"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Every variable read and checked at once (:class:`SettingError` names the first malformed one)."""
        from .limits import Limits
        env = os.environ if env is None else env
        return cls(public=public(env), runs_root=read("INDISTILL_RUNS", env), sharing=read("INDISTILL_SHARING", env),
                   behind_proxy=behind_proxy(env), mcp=read("INDISTILL_MCP", env),
                   analytics=read("INDISTILL_ANALYTICS", env), data_root=read("INDISTILL_DATA_ROOT", env),
                   cache_dir=cache_dir(env), train_threads=read("INDISTILL_TRAIN_THREADS", env),
                   data_dir=read("INDISTILL_DATA_DIR", env), reference_models=read("INDISTILL_REFERENCE_MODELS", env),
                   limits=Limits.from_env(env))
