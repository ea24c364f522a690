"""What a round asks for (``RoundConfig``): a module of its own, importing nothing of ``training``'s
run machinery, so ``training.run_configs`` can check round settings without joining an import
cycle. ``training.rounds`` opens rounds with it.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from annotation.models import Prompt

MAX_SAMPLES_PER_CHECKPOINT = 16
DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class RoundConfig:
    """What a round asks for; stored in ``Round.config`` (plus the frozen ``prompt_ids``)."""

    split: str | None = field(
        default=Prompt.Split.TRAIN, metadata={"help": 'Prompts of this split ("train" or "eval"); None: all.'}
    )
    tag: str | None = field(default=None, metadata={"help": "Only prompts carrying this tag."})
    prompt_count: int | None = field(
        default=None, metadata={"help": "A random sample of this many of the matching prompts (seeded)."}
    )
    samples_per_checkpoint: int | None = field(
        default=None,
        metadata={
            "help": "Responses per prompt from each checkpoint. Default: K with one checkpoint, "
            "else enough for one K-response comparison (1 for pairwise)."
        },
    )
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature; 0 means greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold, in (0, 1]."})
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens per response."})
    seed: int = field(
        default=0, metadata={"help": "Seeds the prompt sample, the sampling and the gold pick."}
    )
    gold_share: float = field(default=0.0, metadata={"help": "Share of comparisons marked gold, 0-1."})
    gold_answers: dict = field(
        default_factory=dict,
        metadata={"help": 'Prompt id -> expected winner {"checkpoint": version, "sample_index": i}.'},
    )
    chunks: int = field(default=1, metadata={"help": "Split the prompts into this many tasks (GPU workers)."})
    device: str | None = field(
        default=None,
        metadata={"help": 'Generation device ("cpu", "cuda", "cuda:1"); None: CUDA when present.'},
    )
    batch_size: int = field(default=8, metadata={"help": "Requests per generation batch (halved on OOM)."})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> RoundConfig:
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValidationError({"config": f"Unknown round settings: {', '.join(unknown)}."})
        if data.get("split") in ("", "all"):
            data["split"] = None
        return cls(**data)

    def errors(self) -> dict[str, list[str]]:
        """Problems with the values themselves (those that need the project come later)."""
        errors: dict[str, list[str]] = defaultdict(list)
        if self.split is not None and self.split not in Prompt.Split.values:
            errors["split"].append(
                f'Split must be one of {", ".join(Prompt.Split.values)}, not "{self.split}".'
            )
        if self.prompt_count is not None and not _is_int(self.prompt_count, minimum=1):
            errors["prompt_count"].append("The number of prompts must be at least 1.")
        if self.samples_per_checkpoint is not None and not _is_int(
            self.samples_per_checkpoint, minimum=1, maximum=MAX_SAMPLES_PER_CHECKPOINT
        ):
            errors["samples_per_checkpoint"].append(
                f"Responses per prompt must be between 1 and {MAX_SAMPLES_PER_CHECKPOINT}."
            )
        if not isinstance(self.temperature, int | float) or self.temperature < 0:
            errors["temperature"].append("Temperature must be 0 (greedy) or more.")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            errors["top_p"].append("Top-p must be greater than 0 and at most 1.")
        if not _is_int(self.max_new_tokens, minimum=1):
            errors["max_new_tokens"].append("Max new tokens must be at least 1.")
        if not _is_int(self.seed, minimum=0):
            errors["seed"].append("The seed must be a whole number, 0 or more.")
        if not isinstance(self.gold_share, int | float) or not 0 <= self.gold_share <= 1:
            errors["gold_share"].append("The gold share must be between 0 and 1.")
        if not isinstance(self.gold_answers, dict):
            errors["gold_answers"].append("Gold answers must map prompt ids to an expected winner.")
        if not _is_int(self.chunks, minimum=1):
            errors["chunks"].append("Chunks must be at least 1.")
        if self.device is not None and not DEVICE_PATTERN.match(str(self.device)):
            errors["device"].append(
                'Device must be "cpu", "cuda", "cuda:N" or "mps" (or empty for automatic).'
            )
        if not _is_int(self.batch_size, minimum=1):
            errors["batch_size"].append("Batch size must be at least 1.")
        return dict(errors)


def _is_int(value, *, minimum: int, maximum: int | None = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= minimum
        and (maximum is None or value <= maximum)
    )
