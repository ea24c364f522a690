"""What a caller learns and controls while a TRL trainer runs: one protocol for every algorithm.

The reward model and DPO report through :class:`TrainingHooks` (a ``transformers``
callback turns them into Trainer events); the caller (a Celery task through its
``RunReporter``, a test, a benchmark) writes the metrics in one format, shows the
progress and asks the run to stop.

No torch at import: the web process imports the configs next to this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TrainingHooks:
    """What the caller (the Celery task) learns and controls while a model trains.

    - ``on_metrics(step, metrics)``: every ``logging_steps`` optimizer steps, the trainer's
      own averages since the last call (DPO: ``rewards/chosen, rewards/rejected,
      rewards/margins, rewards/accuracies, logps/*``; the reward model:
      ``loss, accuracy, margin`` (mean r_w - r_l),
      ``learning_rate, grad_norm, mean_reward, min_reward, max_reward, num_tokens``,
      ``epoch``; with ``eval_steps`` the same names prefixed ``eval_``; once at the
      end of training, ``train_runtime, train_loss, ...``; after the final
      evaluation, ``eval/accuracy, eval/mean_margin, eval/loss`` (step = last step).
    - ``on_progress(step, total_steps)``: after every optimizer step (and step 0).
    - ``should_stop()``: polled after every micro-batch; True cancels the run
      within one micro-batch, and nothing is saved.

    Only rank 0 calls ``on_metrics``/``on_progress``; ``should_stop`` runs on every
    rank and any rank's True stops all of them.
    """

    on_metrics: Callable[[int, dict[str, float]], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None


def hooks_callback(hooks: TrainingHooks):
    from transformers import TrainerCallback

    class HooksCallback(TrainerCallback):
        """Forwards logs and progress to ``hooks`` and turns ``should_stop()`` into a clean stop."""

        def __init__(self):
            self.stopped = False

        def _poll_stop(self, control):
            stop = bool(hooks.should_stop and hooks.should_stop())
            stop = any_rank(stop)
            if stop:
                self.stopped = True
                control.should_training_stop = True
            return control

        def on_train_begin(self, args, state, control, **kwargs):
            if hooks.on_progress and state.is_world_process_zero:
                hooks.on_progress(state.global_step, state.max_steps)

        def on_substep_end(self, args, state, control, **kwargs):
            return self._poll_stop(control)

        def on_step_end(self, args, state, control, **kwargs):
            if hooks.on_progress and state.is_world_process_zero:
                hooks.on_progress(state.global_step, state.max_steps)
            return self._poll_stop(control)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if hooks.on_metrics and logs and state.is_world_process_zero:
                numeric = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
                if numeric:
                    hooks.on_metrics(state.global_step, numeric)

    return HooksCallback()


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is True on any process (a stop seen by one rank must stop all of them)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], device=backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@contextlib.contextmanager
def quiet_progress_bars():
    """No tqdm bars from datasets/transformers while training (the task logs through hooks)."""
    import datasets
    import transformers

    datasets_were_on = datasets.is_progress_bar_enabled()
    transformers_were_on = transformers.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_were_on:
            datasets.enable_progress_bars()
        if transformers_were_on:
            transformers.utils.logging.enable_progress_bar()
