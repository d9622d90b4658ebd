"""Ollama's load-time (runner) options other than ``num_ctx``: a request whose values differ from
those its model was loaded with makes Ollama reload the model (server/sched.go needsReload
compares api.Runner), which also drops the prompt cache. Shared by the simulator, which reloads
as Ollama does, and by the edge and control plane, which route around such reloads.

A request's options are kept as the values it names, sorted by name: ``num_batch`` (default
512), ``num_gpu`` (layers on the GPU; negative, the default, lets Ollama choose; kept as -1),
``main_gpu`` (0), ``num_thread`` (0, Ollama chooses) and ``use_mmap`` (unset, Ollama chooses;
kept as 1 or 0 when named). A default named is kept: it stands over a modelfile's PARAMETER
(server/routes.go modelOptions lays the request's options over the model's). What a request
runs with (``with_defaults``) drops the defaults, so equal settings compare equal. ``num_gpu``
left to Ollama matches an instance loaded with any value (sched.go sets both to -1 before
comparing); every other option must match, a default matching only a default.
"""

from __future__ import annotations

from typing import Any

RunnerOptions = tuple[tuple[str, int], ...]

INT_DEFAULTS = {"num_batch": 512, "num_gpu": -1, "main_gpu": 0, "num_thread": 0}
BOOL_OPTIONS = frozenset({"use_mmap"})
NAMES = frozenset(INT_DEFAULTS) | BOOL_OPTIONS
# The Modelfile PARAMETERs that decide whether a loaded runner serves another model with the same
# weights: these options and the context length (the rest, stop words, temperature and the like,
# apply per request).
LOAD_PARAMETERS = NAMES | {"num_ctx"}
# Not an option a request can name: the adapters and projectors a model's modelfile loads over
# its weights, as a number from their hash. Ollama reloads a runner loaded with other ones as it
# does one loaded with other options, so the control plane keeps them among a runner's options.
ADAPTERS = "adapters"


def runner_options(options: Any) -> RunnerOptions:
    """The runner options a request's ``options`` object names, defaults too. Values of the
    wrong type are left out (the host answers them with its own error)."""
    if not isinstance(options, dict):
        return ()
    found = []
    for name, default in INT_DEFAULTS.items():
        value = options.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            continue
        if abs(value) >= 2**31:  # Go's int options; such a value is the host's error to give
            continue
        number = int(value)
        found.append((name, default if name == "num_gpu" and number < 0 else number))
    for name in BOOL_OPTIONS:
        flag = options.get(name)
        if isinstance(flag, bool):
            found.append((name, int(flag)))
    return tuple(sorted(found))


def needs_reload(loaded: RunnerOptions, asked: RunnerOptions) -> bool:
    """Whether Ollama reloads an instance loaded with ``loaded`` for a request asking ``asked``."""
    if loaded == asked:
        return False
    held = dict(in_effect(loaded))
    wanted = dict(in_effect(asked))
    if "num_gpu" not in wanted:
        held.pop("num_gpu", None)
    return held != wanted


def with_defaults(defaults: RunnerOptions, asked: RunnerOptions) -> RunnerOptions:
    """``asked`` over ``defaults`` (a modelfile's PARAMETERs): what a request runs with, less
    the values at Ollama's defaults. One asked at Ollama's default stands over the modelfile's."""
    if not defaults:
        return in_effect(asked)
    return in_effect(tuple(sorted((dict(defaults) | dict(asked)).items())))


def in_effect(options: RunnerOptions) -> RunnerOptions:
    """``options`` less those at Ollama's defaults (the same settings as naming none)."""
    if not any(INT_DEFAULTS.get(name) == value for name, value in options):
        return options
    return tuple((name, v) for name, v in options if INT_DEFAULTS.get(name) != v)


def with_adapters(options: RunnerOptions, adapters_id: str) -> RunnerOptions:
    """``options`` with the adapters a model's ``adapters_id`` (a hex hash, "" for none) names."""
    if not adapters_id:
        return options
    return tuple(sorted((*options, (ADAPTERS, int(adapters_id[:15], 16)))))


def from_map(values: dict[str, int]) -> RunnerOptions:
    """Options from a map (the wire form), keeping known names only, read as above."""
    known = {name: v for name, v in values.items() if name in NAMES}
    return runner_options({n: bool(v) if n in BOOL_OPTIONS else v for n, v in known.items()})


def describe(options: RunnerOptions) -> str:
    """``num_gpu=20,use_mmap=false``, for people (one word, for tables)."""
    return ",".join(f"{name}={_shown(name, value)}" for name, value in options)


def _shown(name: str, value: int) -> str:
    if name in BOOL_OPTIONS:
        return str(bool(value)).lower()
    return f"{value:015x}"[:12] if name == ADAPTERS else str(value)
