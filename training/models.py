"""What turns judgments into checkpoints: checkpoints, runs, metrics, reward models, snapshots, exports."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Checkpoint(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        RETIRED = "retired", "Retired"

    class Origin(models.TextChoices):
        BASE = "base", "Base model"
        RUN = "run", "Training run"
        IMPORT = "import", "Imported"

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="checkpoints")
    version = models.PositiveIntegerField()
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    uri = models.CharField(
        max_length=1000, help_text="A save_pretrained directory (or a hub id where reachable)."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.RUN)
    produced_by = models.ForeignKey(
        "TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="checkpoints"
    )
    reward_model = models.ForeignKey(
        "RewardModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="policies"
    )
    config = models.JSONField(default=dict, blank=True)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "version"], name="checkpoint_version_unique_per_project"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project} v{self.version}"


class PreferenceSnapshot(models.Model):
    """The exact pairs a run trained on, stored as canonical JSONL and named by their sha256."""

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="snapshots")
    sha256 = models.CharField(max_length=64)
    filters = models.JSONField(default=dict, blank=True)
    options = models.JSONField(default=dict, blank=True)
    pair_count = models.PositiveIntegerField(default=0)
    judgment_count = models.PositiveIntegerField(default=0)
    uri = models.CharField(max_length=1000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "sha256"], name="snapshot_unique_per_project")
        ]

    def __str__(self) -> str:
        return f"snapshot {self.sha256[:12]} ({self.pair_count} pairs)"


class TrainingRun(models.Model):
    class Kind(models.TextChoices):
        GENERATE = "generate", "Generate candidates"
        REWARD_MODEL = "reward_model", "Reward model"
        PPO = "ppo", "PPO"
        LOOP = "loop", "Full loop"
        DPO = "dpo", "DPO"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    config = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=200, blank=True, help_text="What the run is doing now, in words.")
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    log_tail = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    snapshot = models.ForeignKey(
        PreferenceSnapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="runs"
    )
    input_hash = models.CharField(max_length=64, blank=True)
    outputs = models.JSONField(default=dict, blank=True)
    cancel_requested = models.BooleanField(default=False)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress_done__lte=models.F("progress_total")) | Q(progress_total=0),
                name="run_progress_within_total",
            )
        ]
        # The dashboard lists a project's runs in progress.
        indexes = [models.Index(fields=["project", "status"], name="run_project_status")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def progress_percent(self) -> int:
        if not self.progress_total:
            return 100 if self.status == self.Status.SUCCEEDED else 0
        return min(100, round(100 * self.progress_done / self.progress_total))


class Metric(models.Model):
    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveIntegerField()
    name = models.CharField(max_length=64)
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "name", "step"]
        # A resumed run may log a step again: one value per (run, name, step).
        constraints = [
            models.UniqueConstraint(fields=["run", "name", "step"], name="metric_one_value_per_step")
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.step}={self.value:.4g}"


class RewardModel(models.Model):
    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="reward_models")
    run = models.OneToOneField(
        TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="reward_model"
    )
    base_checkpoint = models.ForeignKey(
        Checkpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    snapshot = models.ForeignKey(
        PreferenceSnapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    uri = models.CharField(max_length=1000)
    accuracy = models.FloatField(null=True, blank=True, help_text="Held-out pairwise accuracy.")
    eval_loss = models.FloatField(null=True, blank=True)
    mean_margin = models.FloatField(null=True, blank=True)
    learned = models.BooleanField(
        default=True,
        help_text="True only when the 95% interval of the held-out accuracy lies above chance (0.5); "
        "the loop stops before PPO on a reward model that did not learn.",
    )
    evaluation = models.JSONField(
        default=dict, blank=True, help_text="Accuracy by round and by source, and more."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Reward model #{self.pk} ({self.project})"

    # What the dashboard, the API and the loop say about a reward model, said in one place.

    @property
    def held_out_pairs(self) -> int | None:
        return self.evaluation.get("pairs") if self.evaluation else None

    @property
    def held_out_prompts(self) -> int | None:
        return self.evaluation.get("prompts") if self.evaluation else None

    @property
    def accuracy_interval(self) -> tuple[float, float] | None:
        """95% interval of the held-out accuracy; None when there is nothing to base one on.

        The interval recorded at evaluation (clustered by prompt), else, for models evaluated
        before it was recorded, a Wilson interval over the held-out pairs (narrower than the
        clustered one: it treats the pairs of one ranking as independent).
        """
        evaluation = self.evaluation or {}
        lower, upper = evaluation.get("accuracy_lower"), evaluation.get("accuracy_upper")
        if lower is not None and upper is not None:
            return (float(lower), float(upper))
        pairs = self.held_out_pairs
        if self.accuracy is None or self.accuracy != self.accuracy or not pairs:  # None, NaN, no pairs
            return None
        from training.ml.intervals import wilson_interval

        return wilson_interval(self.accuracy * pairs, pairs)

    @property
    def accuracy_lower(self) -> float | None:
        interval = self.accuracy_interval
        return interval[0] if interval else None

    @property
    def accuracy_upper(self) -> float | None:
        interval = self.accuracy_interval
        return interval[1] if interval else None

    @property
    def held_out_summary(self) -> str:
        """The held-out figures in words, as many as are known: held-out accuracy 0.55 [0.42, 0.68]
        on 40 pairs from 12 prompts."""
        if self.accuracy is None or self.accuracy != self.accuracy:
            return "no held-out accuracy (no held-out pairs to evaluate it on)"
        text = f"held-out accuracy {self.accuracy:.2f}"
        if (interval := self.accuracy_interval) is not None:
            text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
        if (pairs := self.held_out_pairs) is not None:
            text += f" on {pairs} pair{'' if pairs == 1 else 's'}"
            if (prompts := self.held_out_prompts) is not None:
                text += f" from {prompts} prompt{'' if prompts == 1 else 's'}"
        return text

    @property
    def verdict(self) -> str:
        """The held-out summary and what it means: "...: learned" or "...: not better than chance"."""
        if self.learned:
            conclusion = "learned"
        elif self.accuracy_interval is not None:
            conclusion = "not better than chance"
        else:
            conclusion = "not shown to learn"
        return f"{self.held_out_summary}: {conclusion}"


class Export(models.Model):
    class Format(models.TextChoices):
        TRL_JSONL = "trl_jsonl", "TRL preference JSONL (text)"
        TRL_CONVERSATIONAL = "trl_conversational", "TRL preference JSONL (conversational)"
        PARQUET = "parquet", "Parquet"
        HF_DATASET = "hf_dataset", "Hugging Face datasets directory (zip)"
        JUDGMENTS = "judgments", "Raw judgments JSONL"
        PROMPTS_OPENRLHF = "prompts_openrlhf", "Prompts JSONL (OpenRLHF)"
        PROMPTS_VERL = "prompts_verl", "Prompts Parquet (verl)"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=32, choices=Format.choices)
    filters = models.JSONField(default=dict, blank=True)
    licence = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    rows = models.PositiveIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    uri = models.CharField(max_length=1000, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Export #{self.pk} ({self.get_format_display()})"
