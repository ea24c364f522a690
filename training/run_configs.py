"""One set of bounds for every run config, whatever launched it: the dashboard, the API, a command.

A run's ``config`` is JSON that a worker turns into the typed settings of ``training.ml``
(``RewardModelConfig``, ``PPOConfig``, ``PairOptions``) and ``training.round_config.RoundConfig``.
Before a run is created, :func:`run_config_checked` refuses what the worker could not or
should not run, with the problem keyed by field (``"training.batch_size"``):

- keys no setting has (a typo fails at launch, not on the worker);
- values of the wrong type (``"8"`` for an integer, ``NaN``, a list for a number);
- numbers outside :data:`BOUNDS` (a batch of 10^9 pairs grew a worker to 8 GB in 70 s);
- more processes than :data:`MAX_PROCESSES` (a worker caps them at its devices, see
  ``training.distributed.process_count``) and an accelerate config given by path: it is
  taken only by name, from ``settings.ACCELERATE_CONFIGS_DIR``;
- a config larger than :data:`MAX_CONFIG_BYTES` (100k keys made the run page 12.6 MB).

The bounds are generous for a GPU and still keep one run from taking a machine down.
No torch here: the web process checks configs and never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from training.run_kinds import RUN_KINDS
from training.snapshots import JudgmentFilters

MAX_CONFIG_BYTES = 64 * 1024
MAX_PROCESSES = 64
MAX_TEXT = 200
SEED = (0, 2**32 - 1)
ACCELERATE_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# (lowest, highest) for every number a config may hold, by dataclass and field. A numeric field
# without bounds here is refused at import of the tests (tests/training/test_run_configs.py).
BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "RewardModelConfig": {
        "learning_rate": (1e-12, 1.0),
        "num_epochs": (0.01, 100),
        "max_steps": (-1, 1_000_000),
        "batch_size": (1, 1024),
        "gradient_accumulation_steps": (1, 1024),
        "eval_batch_size": (1, 4096),
        "max_length": (16, 32_768),
        "eval_fraction": (0.0, 0.5),
        "seed": SEED,
        "center_rewards_coefficient": (0.0, 100.0),
        "weight_decay": (0.0, 10.0),
        "warmup_ratio": (0.0, 0.99),
        "max_grad_norm": (0.0, 1e6),
        "trainable_layers": (1, 1000),
        "logging_steps": (1, 1_000_000),
        "eval_steps": (1, 1_000_000),
    },
    "DPOConfig": {
        "beta": (1e-4, 100.0),
        "label_smoothing": (0.0, 0.49),
        "learning_rate": (1e-12, 1.0),
        "num_epochs": (0.01, 100),
        "max_steps": (-1, 1_000_000),
        "batch_size": (1, 1024),
        "gradient_accumulation_steps": (1, 1024),
        "max_length": (16, 32_768),
        "eval_fraction": (0.0, 0.5),
        "eval_batch_size": (1, 4096),
        "seed": SEED,
        "warmup_ratio": (0.0, 0.99),
        "max_grad_norm": (0.0, 1e6),
        "trainable_layers": (1, 1000),
        "save_every": (0, 1_000_000),
        "logging_steps": (1, 1_000_000),
    },
    "PairOptions": {
        "min_gold_accuracy": (0.0, 1.0),
        "min_gold_judgments": (1, 1_000_000),
        "min_agreement": (0.0, 1.0),
    },
    "PPOConfig": {
        "learning_rate": (1e-12, 1.0),
        "adam_epsilon": (1e-12, 1.0),
        "weight_decay": (0.0, 10.0),
        "max_grad_norm": (0.0, 1e6),
        "seed": SEED,
        "total_episodes": (1, 10_000_000),
        "batch_size": (1, 4096),
        "mini_batch_size": (1, 4096),
        "micro_batch_size": (1, 4096),
        "num_ppo_epochs": (1, 100),
        "response_length": (1, 8192),
        "max_prompt_length": (1, 32_768),
        "temperature": (1e-3, 10.0),
        "missing_eos_penalty": (-100.0, 100.0),
        "kl_coef": (0.0, 100.0),
        "kl_target": (0.0, 1000.0),
        "kl_horizon": (1, 1_000_000_000),
        "reward_norm_samples": (1, 100_000),
        "cliprange": (0.0, 10.0),
        "cliprange_value": (0.0, 1e6),
        "vf_coef": (0.0, 1000.0),
        "gamma": (0.0, 1.0),
        "lam": (0.0, 1.0),
        "trainable_layers": (1, 1000),
        "lora_r": (1, 1024),
        "lora_alpha": (1, 4096),
        "save_every": (0, 1_000_000),
        "keep_states": (1, 100),
    },
    "RoundConfig": {
        "prompt_count": (1, 1_000_000),
        "samples_per_checkpoint": (1, 16),
        "temperature": (0.0, 10.0),
        "top_p": (1e-6, 1.0),
        "max_new_tokens": (1, 8192),
        "seed": SEED,
        "gold_share": (0.0, 1.0),
        "chunks": (1, 256),
        "batch_size": (1, 1024),
    },
}
# Text settings that name one of a few things.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "DPOConfig": {"lr_scheduler_type": SCHEDULERS},
    "RewardModelConfig": {"lr_scheduler_type": SCHEDULERS},
}
# Settings only the command line may set: a path on the worker is not something to type into a form.
NOT_FROM_A_LAUNCH = {"PPOConfig": {"value_model_path"}}


def _config_classes() -> dict[str, type]:
    """Every dataclass a run config's sections are made of, by name (from training.run_kinds)."""
    return {cls.__name__: cls for entry in RUN_KINDS.values() for cls in entry.sections.values()}


# --- one value ---------------------------------------------------------------------------------


def _kind_of(annotation) -> tuple[set, tuple]:
    """(the plain types a value may have, the Literal choices if any) for a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        allowed, choices = set(), ()
        for arm in typing.get_args(annotation):
            arm_types, arm_choices = _kind_of(arm)
            allowed |= arm_types
            choices += arm_choices
        return allowed, choices
    if origin is typing.Literal:
        return {str}, typing.get_args(annotation)
    if origin in (list, dict):
        return {origin}, ()
    if annotation is type(None):
        return {type(None)}, ()
    return {annotation}, ()


def _value_problem(cls_name: str, name: str, annotation, value) -> str | None:
    allowed, choices = _kind_of(annotation)
    if value is None:
        return None if type(None) in allowed else "A value is required (not null)."
    if isinstance(value, bool):
        return None if bool in allowed else f"Expected {_describe(allowed)}, not true/false."
    if isinstance(value, int | float) and (int in allowed or float in allowed):
        if isinstance(value, float) and not math.isfinite(value):
            return "Expected a finite number."
        if int in allowed and float not in allowed and not isinstance(value, int):
            return "Expected a whole number."
        low, high = BOUNDS.get(cls_name, {}).get(name, (None, None))
        if low is None:
            return "This setting has no bounds to check against, so it cannot be launched."
        if not low <= value <= high:
            return f"Must be between {low:g} and {high:g}."
        return None
    if isinstance(value, str) and str in allowed:
        if len(value) > MAX_TEXT:
            return f"At most {MAX_TEXT} characters."
        options = choices or CHOICES.get(cls_name, {}).get(name)
        if options and value not in options:
            return f"Must be one of {', '.join(map(str, options))}."
        return None
    if isinstance(value, list) and list in allowed:
        if len(value) > 100 or not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value):
            return "Expected a list of at most 100 short texts."
        return None
    if isinstance(value, dict) and dict in allowed:
        return None  # sized with the whole config; the dataclass checks its contents
    return f"Expected {_describe(allowed)}."


def _describe(allowed: set) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}
    names |= {list: "a list", dict: "an object", type(None): "null"}
    return " or ".join(sorted(names.get(t, getattr(t, "__name__", str(t))) for t in allowed))


def settings_problems(cls_name: str, values, prefix: str = "", *, own_checks: bool = True) -> dict[str, str]:
    """Problems with ``values`` as the fields of the dataclass ``cls_name``, keyed by field path;
    with ``own_checks`` also the dataclass's own checks across fields."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        return {prefix.rstrip(".") or "config": "Expected an object of settings."}
    cls = _config_classes()[cls_name]
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    problems = {}
    for name, value in values.items():
        path = f"{prefix}{name}"
        if name not in fields:
            problems[path] = f"No such setting (known: {', '.join(sorted(fields))})."
        elif name in NOT_FROM_A_LAUNCH.get(cls_name, ()) and value is not None:
            problems[path] = "Set only from the command line, not in a launched run."
        elif (problem := _value_problem(cls_name, name, hints[name], value)) is not None:
            problems[path] = problem
    if own_checks and not problems:
        try:  # the dataclass's own checks across fields (mini_batch_size divides batch_size...)
            build = getattr(cls, "from_dict", None) or getattr(cls, "from_mapping", None)
            cfg = build(values) if build else cls(**values)
            for key, messages in (cfg.errors() if hasattr(cfg, "errors") else {}).items():
                problems[f"{prefix}{key}"] = " ".join(messages)
        except (TypeError, ValueError) as error:
            problems[prefix.rstrip(".") or "config"] = str(error)
        except ValidationError as error:
            for key, messages in error.message_dict.items():
                problems[f"{prefix}{key}"] = " ".join(messages)
    return problems


# --- a whole run's config ------------------------------------------------------------------------


def _whole_number(value, low: int, high: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "Expected a whole number."
    return None if low <= value <= high else f"Must be between {low} and {high}."


def _true_or_false(value) -> str | None:
    return None if isinstance(value, bool) else "Expected true or false."


def _process_count(value) -> str | None:
    if value == "auto":
        return None
    return _whole_number(value, 1, MAX_PROCESSES)


def _accelerate_config(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not ACCELERATE_CONFIG_NAME.match(value) or ".." in value:
        return (
            "Give the name of a file in the accelerate configs folder (letters, digits, - _ .), not a path."
        )
    if accelerate_config_path(value) is None:
        return f"No accelerate config named {value!r} in {settings.ACCELERATE_CONFIGS_DIR}."
    return None


def _filters(value) -> str | None:
    try:
        JudgmentFilters.from_json(value)
    except (TypeError, ValueError, AttributeError) as error:
        return str(error) or "Invalid filters."
    return None


def _id(value) -> str | None:
    return _whole_number(value, 1, 2**63 - 1)


# Every top-level setting a run config may hold, by name, with its check: a name means the same
# everywhere. Which kind takes which is in training.run_kinds.
SETTING_CHECKS: dict[str, Any] = {
    "base_checkpoint_id": _id,
    "policy_checkpoint_id": _id,
    "reward_model_id": _id,
    "filters": _filters,
    "train_policy_anyway": _true_or_false,
    "auto_publish": _true_or_false,
    "open_next_round": _true_or_false,
    "algorithm": lambda value: None if value in ("ppo", "dpo") else "Must be one of ppo, dpo.",
    "num_processes": _process_count,
    "accelerate_config": _accelerate_config,
}


def run_config_checked(kind: str, config) -> dict:
    """``config`` if a run of ``kind`` may be launched with it; else ValidationError keyed by field."""
    if not isinstance(config, dict):
        raise ValidationError({"config": "Expected an object of settings."})
    size = len(json.dumps(config, default=str))
    if size > MAX_CONFIG_BYTES:
        raise ValidationError({"config": f"The config is {size:,} bytes; at most {MAX_CONFIG_BYTES:,}."})
    entry = RUN_KINDS.get(kind)
    if entry is None:
        raise ValidationError({"kind": f"No run kind {kind!r} (known: {', '.join(RUN_KINDS)})."})
    problems: dict[str, str] = {}
    for key, value in config.items():
        if key in entry.settings:
            if (problem := SETTING_CHECKS[key](value)) is not None:
                problems[key] = problem
        elif key in entry.sections:
            problems |= settings_problems(entry.sections[key].__name__, value, prefix=f"{key}.")
        else:
            known = sorted([*entry.settings, *entry.sections])
            problems[key] = f"No such setting for this kind of run (known: {', '.join(known)})."
    if problems:
        raise ValidationError({key: [message] for key, message in problems.items()})
    return config


def accelerate_config_path(name: str | None) -> Path | None:
    """The accelerate config file called ``name`` (with or without .yaml) in the configured folder."""
    if not name:
        return None
    folder = Path(settings.ACCELERATE_CONFIGS_DIR).resolve()
    for candidate in (folder / name, folder / f"{name}.yaml", folder / f"{name}.yml"):
        resolved = candidate.resolve()
        if resolved.parent == folder and resolved.is_file():
            return resolved
    return None
