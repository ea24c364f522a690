"""Launch forms of the dashboard: every field validated, defaults that run on the bundled model on a CPU.

Each form is bound to one project: its checkpoint and reward-model choices come from
that project only, so a checkpoint of another project is refused next to the field.
``config()`` turns the cleaned data into the run's JSON config (see ``training.launch``).
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from annotation.models import Project, Prompt
from training.models import Checkpoint, RewardModel
from training.reward_models import not_learned_reason

NOT_THIS_PROJECT = (
    "Choose one of this project's {what}; that one belongs to another project or does not exist."
)


class CheckpointChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Checkpoint) -> str:
        made_by = (
            f" · from run #{obj.produced_by_id}" if obj.produced_by_id else f" · {obj.get_origin_display()}"
        )
        return f"v{obj.version} · {obj.get_status_display()}{made_by}"


class CheckpointMultipleChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Checkpoint) -> str:
        return f"v{obj.version} · {obj.get_status_display()}"


class RewardModelChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: RewardModel) -> str:
        return f"Reward model #{obj.pk} · {obj.verdict}"


def _train_policy_anyway(help_text: str) -> forms.BooleanField:
    return forms.BooleanField(
        label="Train the policy anyway", required=False, initial=False, help_text=help_text
    )


def _learning_rate(initial: float) -> forms.FloatField:
    return forms.FloatField(
        initial=initial,
        min_value=1e-9,
        max_value=1.0,
        help_text="Peak AdamW learning rate, e.g. 2e-5.",
        error_messages={"min_value": "The learning rate must be greater than 0."},
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )


def _positive_int(initial: int, help_text: str, *, max_value: int = 100_000, min_value: int = 1):
    return forms.IntegerField(initial=initial, min_value=min_value, max_value=max_value, help_text=help_text)


def _newest(queryset):
    published = queryset.filter(status=Checkpoint.Status.PUBLISHED).order_by("-version").first()
    return published or queryset.order_by("-version").first()


class ProjectForm(forms.Form):
    """A form whose model choices are limited to ``project``."""

    def __init__(self, *args, project: Project, **kwargs):
        super().__init__(*args, **kwargs)
        self.project = project
        checkpoints = Checkpoint.objects.filter(project=project).exclude(status=Checkpoint.Status.RETIRED)
        for name, field in self.fields.items():
            if isinstance(field, forms.ModelChoiceField | forms.ModelMultipleChoiceField):
                if field.queryset.model is Checkpoint:
                    field.queryset = checkpoints.select_related("produced_by").order_by("-version")
                    if not self.is_bound and not isinstance(field, forms.ModelMultipleChoiceField):
                        self.initial.setdefault(name, _newest(checkpoints))
                elif field.queryset.model is RewardModel:
                    field.queryset = RewardModel.objects.filter(project=project).order_by("-created_at")
                    if not self.is_bound:
                        self.initial.setdefault(name, field.queryset.first())


class RewardModelLaunchForm(ProjectForm):
    base_checkpoint = CheckpointChoiceField(
        queryset=Checkpoint.objects.none(),
        help_text="The reward model is this checkpoint with a scalar head.",
        error_messages={"invalid_choice": NOT_THIS_PROJECT.format(what="checkpoints")},
    )
    learning_rate = _learning_rate(2e-5)
    batch_size = _positive_int(4, "Pairs per step (the model sees twice as many sequences).", max_value=1024)
    num_epochs = forms.FloatField(
        label="Epochs",
        initial=1.0,
        min_value=0.01,
        max_value=100,
        help_text="Passes over the training pairs.",
    )
    max_steps = _positive_int(
        60, "Stop after this many steps (0: all epochs). 60 steps take a few minutes on a CPU.", min_value=0
    )
    max_length = _positive_int(384, "Longest pair in tokens; longer pairs are left out.", max_value=32_768)
    eval_fraction = forms.FloatField(
        initial=0.1, min_value=0.0, max_value=0.5, help_text="Share of prompts held out for accuracy."
    )
    weighting = forms.ChoiceField(
        choices=[
            ("per_pair", "Every pair counts once (TRL)"),
            ("per_ranking", "Every ranking counts once (textbook)"),
        ],
        initial="per_pair",
        help_text="How a K-wise ranking's pairs are weighed in the loss.",
    )
    keep_both_bad = forms.BooleanField(required=False, help_text="Train on judgments marked both bad too.")
    min_gold_accuracy = forms.FloatField(
        required=False,
        min_value=0.0,
        max_value=1.0,
        help_text="Leave out annotators whose gold accuracy is below this (empty: keep everyone).",
    )
    seed = _positive_int(
        0, "Seed for initialisation, data order and split.", min_value=0, max_value=2**31 - 1
    )

    def config(self) -> dict:
        d = self.cleaned_data
        return {
            "base_checkpoint_id": d["base_checkpoint"].pk,
            "training": {
                "learning_rate": d["learning_rate"],
                "batch_size": d["batch_size"],
                "num_epochs": d["num_epochs"],
                "max_steps": d["max_steps"] or -1,
                "max_length": d["max_length"],
                "eval_fraction": d["eval_fraction"],
                "seed": d["seed"],
            },
            "pairs": {
                "weighting": d["weighting"],
                "keep_both_bad": d["keep_both_bad"],
                "min_gold_accuracy": d["min_gold_accuracy"],
            },
        }


class PPOLaunchForm(ProjectForm):
    policy_checkpoint = CheckpointChoiceField(
        queryset=Checkpoint.objects.none(),
        help_text="The policy to improve; it is also the frozen reference for the KL penalty.",
        error_messages={"invalid_choice": NOT_THIS_PROJECT.format(what="checkpoints")},
    )
    reward_model = RewardModelChoiceField(
        queryset=RewardModel.objects.none(),
        help_text="Scores each sampled response at its last token.",
        error_messages={
            "invalid_choice": NOT_THIS_PROJECT.format(what="reward models"),
            "required": "Train a reward model first, then choose it here.",
        },
    )
    learning_rate = _learning_rate(3e-6)
    total_episodes = _positive_int(64, "Responses sampled over the whole run.", max_value=10_000_000)
    batch_size = _positive_int(8, "Responses sampled per update (the rollout batch).", max_value=4096)
    mini_batch_size = _positive_int(
        4, "Responses per optimiser step; must divide the batch size.", max_value=4096
    )
    num_ppo_epochs = _positive_int(2, "Passes over each rollout batch.", max_value=32)
    response_length = _positive_int(48, "Most tokens sampled per response.", max_value=4096)
    kl_coef = forms.FloatField(
        initial=0.05,
        min_value=0.0,
        max_value=10.0,
        help_text="β of the per-token KL penalty against the reference.",
    )
    cliprange = forms.FloatField(
        initial=0.2, min_value=0.01, max_value=1.0, help_text="ε of the clipped policy ratio."
    )
    temperature = forms.FloatField(
        initial=0.7,
        min_value=0.01,
        max_value=5.0,
        help_text="Sampling temperature (must be above 0).",
    )
    seed = _positive_int(0, "Seed for sampling and prompt order.", min_value=0, max_value=2**31 - 1)
    train_policy_anyway = _train_policy_anyway(
        "Run PPO even though the chosen reward model did not learn (its held-out accuracy is not "
        "better than chance). PPO then follows noise; tick it only to try the pipeline."
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        chosen = self.initial.get("reward_model") if not self.is_bound else None
        if isinstance(chosen, RewardModel) and not chosen.learned:
            # The newest reward model is chosen for the admin; say so before they launch on it.
            self.fields["reward_model"].warning = not_learned_reason(chosen)

    def clean(self):
        data = super().clean()
        batch, mini = data.get("batch_size"), data.get("mini_batch_size")
        if batch and mini and batch % mini:
            self.add_error("mini_batch_size", f"The mini-batch size must divide the batch size ({batch}).")
        reward_model = data.get("reward_model")
        if reward_model is not None and not reward_model.learned and not data.get("train_policy_anyway"):
            self.add_error(
                "reward_model",
                ValidationError(
                    f"{not_learned_reason(reward_model)} Choose a reward model that learned, or tick "
                    "'Train the policy anyway'.",
                    code="not_learned",
                ),
            )
        return data

    def config(self) -> dict:
        d = self.cleaned_data
        return {
            "policy_checkpoint_id": d["policy_checkpoint"].pk,
            "reward_model_id": d["reward_model"].pk,
            "training": {
                name: d[name]
                for name in (
                    "learning_rate",
                    "total_episodes",
                    "batch_size",
                    "mini_batch_size",
                    "num_ppo_epochs",
                    "response_length",
                    "kl_coef",
                    "cliprange",
                    "temperature",
                    "seed",
                )
            }
            | {"reward_norm_samples": 32},  # the default 128 reference samples is slow on a CPU
            "train_policy_anyway": d["train_policy_anyway"],
        }


class DPOLaunchForm(ProjectForm):
    policy_checkpoint = CheckpointChoiceField(
        queryset=Checkpoint.objects.none(),
        help_text="The policy to improve; it is also the reference DPO keeps it close to.",
        error_messages={"invalid_choice": NOT_THIS_PROJECT.format(what="checkpoints")},
    )
    loss_type = forms.ChoiceField(
        label="Loss",
        choices=[
            ("sigmoid", "DPO (sigmoid)"),
            ("ipo", "IPO"),
            ("robust", "Robust DPO (needs label smoothing)"),
            ("hinge", "SLiC (hinge)"),
            ("apo_zero", "APO-zero"),
        ],
        initial="sigmoid",
        help_text="TRL's DPOTrainer loss; with label smoothing, sigmoid is conservative DPO.",
    )
    beta = forms.FloatField(
        label="β",
        initial=0.1,
        min_value=1e-4,
        max_value=100.0,
        help_text="How strongly the policy is held to the reference (larger: closer).",
    )
    label_smoothing = forms.FloatField(
        initial=0.0,
        min_value=0.0,
        max_value=0.49,
        help_text="Share of judgments assumed flipped (conservative or robust DPO); 0 for plain DPO.",
    )
    learning_rate = _learning_rate(5e-6)
    max_steps = _positive_int(
        20,
        "Stop after this many steps (0: all epochs). On SmolLM2 and 2 CPU cores a step of 8 pairs "
        "takes about 18 s with 8 layers trained, after about a minute scoring the pairs with the reference.",
        min_value=0,
    )
    batch_size = _positive_int(4, "Pairs per micro-batch; a step is two micro-batches.", max_value=1024)
    trainable_layers = _positive_int(
        8,
        "Train only the top this-many layers (0: all); fewer is faster on a CPU.",
        min_value=0,
        max_value=1000,
    )
    max_length = _positive_int(384, "Tokens of prompt plus answer kept.", max_value=32_768)
    seed = _positive_int(0, "Seed for data order and the held-out split.", min_value=0, max_value=2**31 - 1)

    def clean(self):
        data = super().clean()
        loss, smoothing = data.get("loss_type"), data.get("label_smoothing")
        if loss == "robust" and not smoothing:
            self.add_error("label_smoothing", "Robust DPO needs a share of flipped judgments above 0.")
        elif smoothing and loss not in ("sigmoid", "robust"):
            self.add_error("label_smoothing", "Only the sigmoid and robust losses use label smoothing.")
        return data

    def config(self) -> dict:
        d = self.cleaned_data
        return {
            "policy_checkpoint_id": d["policy_checkpoint"].pk,
            "training": {
                name: d[name]
                for name in (
                    "loss_type",
                    "beta",
                    "label_smoothing",
                    "learning_rate",
                    "batch_size",
                    "max_length",
                    "seed",
                )
            }
            | {"max_steps": d["max_steps"] or -1, "trainable_layers": d["trainable_layers"] or None},
        }


class LoopLaunchForm(ProjectForm):
    base_checkpoint = CheckpointChoiceField(
        queryset=Checkpoint.objects.none(),
        help_text="Start of the loop: the reward model's base and the policy PPO improves.",
        error_messages={"invalid_choice": NOT_THIS_PROJECT.format(what="checkpoints")},
    )
    reward_learning_rate = _learning_rate(2e-5)
    reward_max_steps = _positive_int(60, "Reward-model steps (0: one full epoch).", min_value=0)
    reward_batch_size = _positive_int(4, "Pairs per reward-model step.", max_value=1024)
    ppo_learning_rate = _learning_rate(3e-6)
    ppo_total_episodes = _positive_int(64, "Responses PPO samples over the run.", max_value=10_000_000)
    ppo_batch_size = _positive_int(8, "Responses per PPO update.", max_value=4096)
    kl_coef = forms.FloatField(initial=0.05, min_value=0.0, max_value=10.0, help_text="β of the KL penalty.")
    open_next_round = forms.BooleanField(
        label="Publish the new checkpoint",
        required=False,
        initial=True,
        help_text="When PPO is done, publish the new policy so the next round can compare it with its parent.",
    )
    train_policy_anyway = _train_policy_anyway(
        "Go on to PPO even when the reward model does not learn (the interval of its held-out "
        "accuracy includes chance, 0.5). Left unticked, the loop stops before PPO and says how many "
        "pairs it had and what to collect next."
    )
    seed = _positive_int(0, "Seed for every stage.", min_value=0, max_value=2**31 - 1)

    def clean(self):
        data = super().clean()
        batch = data.get("ppo_batch_size")
        if batch and batch % 4 and batch > 4:
            self.add_error("ppo_batch_size", "Use a multiple of 4 (PPO updates in mini-batches of 4).")
        return data

    def config(self) -> dict:
        d = self.cleaned_data
        mini = min(4, d["ppo_batch_size"])
        return {
            "base_checkpoint_id": d["base_checkpoint"].pk,
            "reward_model": {
                "learning_rate": d["reward_learning_rate"],
                "max_steps": d["reward_max_steps"] or -1,
                "batch_size": d["reward_batch_size"],
                "max_length": 384,
                "seed": d["seed"],
            },
            "ppo": {
                "learning_rate": d["ppo_learning_rate"],
                "total_episodes": d["ppo_total_episodes"],
                "batch_size": d["ppo_batch_size"],
                "mini_batch_size": mini,
                "num_ppo_epochs": 2,
                "response_length": 48,
                "kl_coef": d["kl_coef"],
                "reward_norm_samples": 32,
                "seed": d["seed"],
            },
            "pairs": {"weighting": "per_pair"},
            "open_next_round": d["open_next_round"],
            "train_policy_anyway": d["train_policy_anyway"],
        }


class RoundOpenForm(ProjectForm):
    checkpoints = CheckpointMultipleChoiceField(
        queryset=Checkpoint.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        help_text="Each prompt gets responses from every chosen checkpoint; pick two to compare them.",
        error_messages={"invalid_choice": NOT_THIS_PROJECT.format(what="checkpoints")},
    )
    prompt_count = _positive_int(20, "Prompts drawn for this round.", max_value=100_000)
    split = forms.ChoiceField(choices=Prompt.Split.choices, initial=Prompt.Split.TRAIN)
    samples_per_checkpoint = _positive_int(
        2, "Responses per prompt from each checkpoint (with one checkpoint, use 2 or more).", max_value=6
    )
    max_new_tokens = _positive_int(128, "Most tokens per response.", max_value=4096)
    temperature = forms.FloatField(initial=0.8, min_value=0.0, max_value=5.0)
    top_p = forms.FloatField(initial=0.95, min_value=0.01, max_value=1.0)
    seed = _positive_int(0, "Seed for prompt choice and sampling.", min_value=0, max_value=2**31 - 1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            newest = list(self.fields["checkpoints"].queryset[:2])
            self.initial.setdefault("checkpoints", [c.pk for c in newest])

    def clean(self):
        data = super().clean()
        chosen = data.get("checkpoints")
        samples = data.get("samples_per_checkpoint")
        if chosen is not None and samples is not None and len(chosen) * samples < 2:
            raise ValidationError(
                "A comparison needs at least two responses: choose two checkpoints or 2 samples per checkpoint."
            )
        if chosen is not None and samples is not None and len(chosen) * samples > 6:
            self.add_error(
                "samples_per_checkpoint", "At most 6 responses per prompt (checkpoints × samples)."
            )
        return data

    def config(self) -> dict:
        d = self.cleaned_data
        return {
            "prompt_count": d["prompt_count"],
            "split": d["split"],
            "samples_per_checkpoint": d["samples_per_checkpoint"],
            "max_new_tokens": d["max_new_tokens"],
            "temperature": d["temperature"],
            "top_p": d["top_p"],
            "seed": d["seed"],
        }


LAUNCH_FORMS = {
    "round": RoundOpenForm,
    "reward-model": RewardModelLaunchForm,
    "ppo": PPOLaunchForm,
    "dpo": DPOLaunchForm,
    "loop": LoopLaunchForm,
}
