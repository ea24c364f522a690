"""TRL trains on the exported files exactly as they are: RewardTrainer and DPOTrainer, one step each."""

from __future__ import annotations

import pytest
import torch

from tests.exports.conftest import unzip
from training.exports import export_run
from training.models import Export

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def exported(project, fmt, tmp_path):
    from datasets import load_dataset

    export = export_run(Export.objects.create(project=project, format=fmt))
    assert export.status == Export.Status.SUCCEEDED, export.error
    out = unzip(export.uri, tmp_path / fmt)
    if fmt == Export.Format.PARQUET:
        return load_dataset("parquet", data_files=str(out / "data/train.parquet"), split="train")
    return load_dataset("json", data_files=str(out / "data/train.jsonl"), split="train")


def _params(model):
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def _moved(before, model) -> bool:
    after = [p for p in model.parameters() if p.requires_grad]
    return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def _common(tmp_path):
    return dict(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        max_length=128,
    )


@pytest.mark.parametrize(
    "fmt", [Export.Format.TRL_JSONL, Export.Format.TRL_CONVERSATIONAL, Export.Format.PARQUET]
)
def test_reward_trainer_trains_one_step(judged, tiny_checkpoint, tmp_path, fmt):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    dataset = exported(judged, fmt, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    before = _params(model)
    trainer = RewardTrainer(
        model=model, args=RewardConfig(**_common(tmp_path)), train_dataset=dataset, processing_class=tokenizer
    )
    result = trainer.train()
    assert result.global_step == 1
    assert _moved(before, model)


@pytest.mark.parametrize("fmt", [Export.Format.TRL_JSONL, Export.Format.TRL_CONVERSATIONAL])
def test_dpo_trainer_trains_one_step(judged, tiny_checkpoint, tmp_path, fmt):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    dataset = exported(judged, fmt, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    before = _params(model)
    trainer = DPOTrainer(
        model=model, args=DPOConfig(**_common(tmp_path)), train_dataset=dataset, processing_class=tokenizer
    )
    result = trainer.train()
    assert result.global_step == 1
    assert _moved(before, model)
