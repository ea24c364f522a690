"""What annotators touch: projects, prompts, rounds, responses, comparisons, leases, judgments."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils.safestring import SafeString, mark_safe

from annotation.rendering import markdown_to_safe_html


def conversation_preview(conversation: list) -> str:
    """The start of the last user turn: how lists name a prompt."""
    turns = [turn.get("content", "") for turn in conversation if turn.get("role") == "user"]
    text = turns[-1] if turns else ""
    return text if len(text) <= 80 else text[:77] + "..."


MAX_CRITERIA, MAX_CRITERION_LENGTH = 12, 60


def validate_criteria(value) -> None:
    """Criteria are a list of unique, non-empty names: every judgment form and export reads them so."""
    if not isinstance(value, list):
        raise ValidationError('Criteria are a list of names, e.g. ["helpfulness", "harmlessness"].')
    if len(value) > MAX_CRITERIA:
        raise ValidationError(f"At most {MAX_CRITERIA} criteria.")
    seen = set()
    for position, name in enumerate(value, start=1):
        if not isinstance(name, str) or not name.strip():
            raise ValidationError(f"Criterion {position} is not a name (a non-empty text).")
        if name != name.strip() or len(name) > MAX_CRITERION_LENGTH:
            raise ValidationError(
                f"Criterion {position} must be at most {MAX_CRITERION_LENGTH} characters, "
                "without leading or trailing spaces."
            )
        if name.casefold() in seen:
            raise ValidationError(f"Criterion {name!r} is listed twice.")
        seen.add(name.casefold())


class Project(models.Model):
    class Mode(models.TextChoices):
        PAIRWISE = "pairwise", "Pairwise (A vs B)"
        KWISE = "kwise", "K-wise ranking"

    class Scale(models.TextChoices):
        BINARY = "binary", "Binary (A or B)"
        LIKERT4 = "likert4", "4-point strength"

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown to annotators one key away.")
    comparison_mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.PAIRWISE)
    k = models.PositiveSmallIntegerField(
        default=2, help_text="Responses per comparison (2 for pairwise, 3-6 K-wise)."
    )
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Judgments wanted per comparison.")
    scale = models.CharField(max_length=16, choices=Scale.choices, default=Scale.LIKERT4)
    allow_tie = models.BooleanField(default=True)
    allow_both_bad = models.BooleanField(default=True)
    rationale_required = models.BooleanField(default=False)
    criteria = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_criteria],
        help_text='Optional per-criterion ratings, e.g. ["helpfulness", "harmlessness"].',
    )
    lease_minutes = models.PositiveSmallIntegerField(default=10)
    gold_rate = models.FloatField(default=0.0, help_text="Share of handed-out items that are gold (0-1).")
    max_open_leases = models.PositiveSmallIntegerField(
        default=1, help_text="Open items an annotator may hold at once."
    )
    open_to_all_annotators = models.BooleanField(default=True)
    annotators = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="assigned_projects"
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(k__gte=2, k__lte=6), name="project_k_2_to_6"),
            models.CheckConstraint(
                condition=~Q(comparison_mode="pairwise") | Q(k=2), name="project_pairwise_means_k_2"
            ),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(
                condition=Q(gold_rate__gte=0, gold_rate__lte=1), name="project_gold_rate_share"
            ),
            models.CheckConstraint(condition=Q(lease_minutes__gte=1), name="project_lease_minutes_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class Prompt(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        EVAL = "eval", "Evaluation"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    conversation = models.JSONField(
        help_text="List of {role, content}; a single-turn prompt is one user message."
    )
    source = models.CharField(max_length=200, default="upload")
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    tags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        # Opening a round selects a project's prompts by split.
        indexes = [models.Index(fields=["project", "split"], name="prompt_project_split")]

    def __str__(self) -> str:
        return self.preview

    @property
    def preview(self) -> str:
        return conversation_preview(self.conversation)


class Round(models.Model):
    class Status(models.TextChoices):
        GENERATING = "generating", "Generating"
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.GENERATING)
    checkpoints = models.ManyToManyField("training.Checkpoint", related_name="rounds", blank=True)
    config = models.JSONField(default=dict, blank=True, help_text="Prompt selection and sampling parameters.")
    generation_run = models.ForeignKey(
        "training.TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="round_number_unique_per_project")
        ]

    def __str__(self) -> str:
        return f"{self.project} · round {self.number}"


class Response(models.Model):
    class Finish(models.TextChoices):
        EOS = "eos", "End of sequence"
        LENGTH = "length", "Token limit"
        IMPORTED = "imported", "Imported"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    round = models.ForeignKey(
        Round, null=True, blank=True, on_delete=models.CASCADE, related_name="responses"
    )
    checkpoint = models.ForeignKey(
        "training.Checkpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="responses"
    )
    sample_index = models.PositiveSmallIntegerField(default=0)
    text = models.TextField()
    # ``text`` as the page shows it (annotation.rendering), rendered once when a worker writes
    # it rather than on every view; NULL for rows written without it (imports), which are
    # rendered when shown. After a change to the renderer's allow-list, set it to NULL to
    # re-render. (Nullable also lets SQLite add the column without rebuilding the table.)
    html = models.TextField(null=True, editable=False)
    generation_params = models.JSONField(default=dict, blank=True)
    token_count = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=16, choices=Finish.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # Generation is idempotent: re-running a round fills only the missing keys.
            models.UniqueConstraint(
                fields=["round", "prompt", "checkpoint", "sample_index"],
                condition=Q(round__isnull=False, checkpoint__isnull=False),
                name="response_generation_key_unique",
            )
        ]

    def __str__(self) -> str:
        return self.text[:60]

    def save(self, *args, **kwargs):
        self.html = markdown_to_safe_html(self.text)
        if kwargs.get("update_fields") is not None and "text" in kwargs["update_fields"]:
            kwargs["update_fields"] = {*kwargs["update_fields"], "html"}
        super().save(*args, **kwargs)

    def safe_html(self) -> SafeString:
        """``text`` rendered as safe HTML: the stored rendering, else rendered now."""
        return markdown_to_safe_html(self.text) if self.html is None else mark_safe(self.html)  # noqa: S308 - stored by markdown_to_safe_html


class Comparison(models.Model):
    round = models.ForeignKey(
        Round, null=True, blank=True, on_delete=models.CASCADE, related_name="comparisons"
    )
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="comparisons")
    responses = models.ManyToManyField(Response, through="ComparisonItem", related_name="comparisons")
    source = models.CharField(
        max_length=200, default="generated", help_text='"generated" or "imported:<name>".'
    )
    is_gold = models.BooleanField(default=False)
    gold_ranking = models.JSONField(
        null=True, blank=True, help_text="Expected answer for gold items: groups of response ids, best first."
    )
    judgment_count = models.PositiveIntegerField(
        default=0, help_text="Denormalised; kept by judgment_submit."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(is_gold=True) | Q(gold_ranking__isnull=False), name="gold_has_answer"
            ),
        ]
        indexes = [
            # Progress line: how many of a round's items still want judgments.
            models.Index(fields=["round", "judgment_count"], name="comparison_round_open"),
            # "Next comparison" walks a round's items in hand-out order (gold or not, then id)
            # and stops at the first one the annotator may take (annotation.leases._claim).
            # judgment_count in the index lets that walk pass the items already complete
            # without reading their rows: late in a big round they are most of it.
            models.Index(fields=["round", "is_gold", "id", "judgment_count"], name="comparison_handout_open"),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk}"


class ComparisonItem(models.Model):
    """One response in a comparison. A database trigger (migration 0002) rejects a
    response whose prompt is not the comparison's prompt."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="items")
    response = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["comparison", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "position"], name="comparison_item_position_unique"
            ),
            models.UniqueConstraint(
                fields=["comparison", "response"], name="comparison_item_response_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"Response {self.response_id} at position {self.position} of comparison {self.comparison_id}"


class Lease(models.Model):
    """An annotator's claim on a comparison until ``expires_at``.

    There is at most one lease row per (comparison, annotator); it is deleted when the
    annotator submits or skips, so "one live lease" holds in the database itself.
    """

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="leases")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases")
    order = models.JSONField(default=list, help_text="Response ids in the order shown to this annotator.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="lease_one_per_comparison_annotator"
            )
        ]
        indexes = [
            # Counting live leases of a comparison when handing out work.
            models.Index(fields=["comparison", "expires_at"], name="lease_comparison_expiry"),
            # An annotator's open leases (resume, cap on open leases).
            models.Index(fields=["annotator", "expires_at"], name="lease_annotator_expiry"),
        ]

    def __str__(self) -> str:
        return f"Lease of comparison {self.comparison_id} to user {self.annotator_id} until {self.expires_at:%H:%M}"


class Judgment(models.Model):
    class Strength(models.TextChoices):
        SLIGHT = "slight", "Slightly better"
        MUCH = "much", "Much better"

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="judgments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="judgments",
        help_text="Empty for imported preference data.",
    )
    source = models.CharField(
        max_length=200, default="human", help_text='"human", "simulated" or "imported:<name>".'
    )
    ranking = models.JSONField(
        help_text="Groups of response ids, best first; a group of two or more is a tie."
    )
    strength = models.CharField(max_length=8, choices=Strength.choices, null=True, blank=True)
    is_tie = models.BooleanField(default=False)
    both_bad = models.BooleanField(default=False)
    rationale = models.TextField(blank=True)
    criteria = models.JSONField(default=dict, blank=True)
    order_shown = models.JSONField(default=list, blank=True, help_text="Response ids left to right as shown.")
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    client_id = models.UUIDField(
        null=True, blank=True, unique=True, help_text="Makes a retried submit idempotent."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="judgment_one_per_comparison_annotator"
            ),
            models.CheckConstraint(
                condition=Q(annotator__isnull=False) | Q(source__startswith="imported"),
                name="judgment_annotator_unless_imported",
            ),
        ]
        indexes = [
            # Progress line ("done today") and an annotator's recent judgments.
            models.Index(fields=["annotator", "created_at"], name="judgment_annotator_time"),
            # What an annotator judged from a round on (leases.first_comparison_id), read from the index alone.
            models.Index(fields=["annotator", "comparison"], name="judgment_annotator_comparison"),
        ]

    def __str__(self) -> str:
        return f"Judgment {self.pk} on comparison {self.comparison_id}"


class Skip(models.Model):
    """An annotator passed on a comparison; it goes back to the pool for others."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="skips")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="skips")
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="skip_one_per_comparison_annotator"
            )
        ]

    def __str__(self) -> str:
        return f"Skip of comparison {self.comparison_id} by user {self.annotator_id}"


class Report(models.Model):
    """An annotator flagged a comparison for the admins (broken, harmful, unanswerable)."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="reports")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reports")
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"],
                condition=Q(resolved_at__isnull=True),
                name="report_one_open_per_comparison_annotator",
            )
        ]

    def __str__(self) -> str:
        return f"Report on comparison {self.comparison_id}: {self.reason[:40]}"


class AnnotatorProfile(models.Model):
    """Per-annotator settings that admins manage."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="annotator_profile"
    )
    excluded_from_snapshots = models.BooleanField(
        default=False, help_text="Leave this annotator's judgments out of future preference snapshots."
    )
    note = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"Profile of {self.user}"
