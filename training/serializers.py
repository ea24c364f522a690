"""API shapes (``/api/``): what a script reads and writes. Views live in ``training/api.py``."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import reverse
from rest_framework import serializers

from annotation.models import Comparison, Judgment, Project, Prompt, Round, validate_criteria
from training.exports import annotator_ids, normalise_filters
from training.models import Checkpoint, Export, RewardModel, TrainingRun
from training.run_kinds import LAUNCHABLE
from training.snapshots import annotator_pseudonym
from webapp.roles import ADMIN, has_role

ROLES = ("system", "user", "assistant")


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "description",
            "guidelines",
            "comparison_mode",
            "k",
            "overlap",
            "scale",
            "allow_tie",
            "allow_both_bad",
            "rationale_required",
            "criteria",
            "lease_minutes",
            "gold_rate",
            "is_active",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]

    def validate_criteria(self, value):
        try:
            validate_criteria(value)
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.messages) from error
        return value

    def validate(self, attrs):
        mode = attrs.get("comparison_mode", getattr(self.instance, "comparison_mode", Project.Mode.PAIRWISE))
        k = attrs.get("k", getattr(self.instance, "k", 2))
        if not 2 <= k <= 6:
            raise serializers.ValidationError({"k": "k is between 2 and 6."})
        if mode == Project.Mode.PAIRWISE and k != 2:
            raise serializers.ValidationError({"k": "A pairwise project compares 2 responses."})
        if not 0 <= attrs.get("gold_rate", 0) <= 1:
            raise serializers.ValidationError({"gold_rate": "A share between 0 and 1."})
        for name in ("overlap", "lease_minutes"):
            if name in attrs and attrs[name] < 1:
                raise serializers.ValidationError({name: "At least 1."})
        return attrs


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = serializers.CharField(trim_whitespace=False)


class PromptSerializer(serializers.ModelSerializer):
    conversation = MessageSerializer(many=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)

    class Meta:
        model = Prompt
        fields = ["id", "project", "conversation", "source", "split", "tags", "created_at"]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"source": {"default": "api"}}

    def validate_conversation(self, turns):
        if not turns or turns[-1]["role"] != "user":
            raise serializers.ValidationError("A prompt ends with a user turn.")
        if any(t["role"] == "system" for t in turns[1:]):
            raise serializers.ValidationError("Only the first turn may be a system turn.")
        if any(not t["content"].strip() for t in turns):
            raise serializers.ValidationError("Every turn needs some text.")
        return [{"role": t["role"], "content": t["content"]} for t in turns]


class RoundSerializer(serializers.ModelSerializer):
    checkpoints = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = Round
        fields = ["id", "project", "number", "status", "checkpoints", "created_at", "opened_at", "closed_at"]


class ComparisonResponseSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="response_id")
    position = serializers.IntegerField()
    checkpoint = serializers.IntegerField(source="response.checkpoint_id", allow_null=True)
    text = serializers.CharField(source="response.text")


class ComparisonSerializer(serializers.ModelSerializer):
    project = serializers.IntegerField(source="prompt.project_id")
    round_number = serializers.IntegerField(source="round.number", allow_null=True, default=None)
    responses = ComparisonResponseSerializer(source="items", many=True)

    class Meta:
        model = Comparison
        fields = [
            "id",
            "project",
            "round",
            "round_number",
            "prompt",
            "source",
            "is_gold",
            "gold_ranking",
            "judgment_count",
            "responses",
            "created_at",
        ]


class JudgmentSerializer(serializers.ModelSerializer):
    """A judgment as researchers see it: the annotator as a per-project pseudonym, never the user."""

    annotator = serializers.SerializerMethodField()
    project = serializers.IntegerField(source="comparison.prompt.project_id")
    round = serializers.IntegerField(source="comparison.round_id", allow_null=True)

    class Meta:
        model = Judgment
        fields = [
            "id",
            "project",
            "round",
            "comparison",
            "annotator",
            "source",
            "ranking",
            "strength",
            "is_tie",
            "both_bad",
            "rationale",
            "criteria",
            "order_shown",
            "time_spent_ms",
            "created_at",
        ]

    def get_annotator(self, obj) -> str | None:
        return annotator_pseudonym(obj.comparison.prompt.project_id, obj.annotator_id)


class CheckpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = Checkpoint
        fields = [
            "id",
            "project",
            "version",
            "parent",
            "uri",
            "status",
            "origin",
            "produced_by",
            "reward_model",
            "config",
            "notes",
            "created_at",
            "published_at",
        ]


class RewardModelSerializer(serializers.ModelSerializer):
    """A reward model with its held-out verdict: ``learned`` is true only when the 95% interval of
    its held-out accuracy lies above chance (0.5)."""

    accuracy_lower = serializers.FloatField(
        read_only=True, allow_null=True, help_text="Lower end of the 95% interval of the held-out accuracy."
    )
    accuracy_upper = serializers.FloatField(
        read_only=True, allow_null=True, help_text="Upper end of the 95% interval of the held-out accuracy."
    )
    held_out_pairs = serializers.IntegerField(read_only=True, allow_null=True)
    held_out_prompts = serializers.IntegerField(read_only=True, allow_null=True)
    verdict = serializers.CharField(
        read_only=True,
        help_text='In words, e.g. "held-out accuracy 0.55 [0.42, 0.68] on 40 pairs from 12 prompts: '
        'not better than chance".',
    )

    class Meta:
        model = RewardModel
        fields = [
            "id",
            "project",
            "run",
            "base_checkpoint",
            "snapshot",
            "uri",
            "accuracy",
            "accuracy_lower",
            "accuracy_upper",
            "held_out_pairs",
            "held_out_prompts",
            "eval_loss",
            "mean_margin",
            "learned",
            "verdict",
            "evaluation",
            "created_at",
        ]
        read_only_fields = fields


class RunSerializer(serializers.ModelSerializer):
    progress_percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "project",
            "kind",
            "config",
            "status",
            "stage",
            "progress_done",
            "progress_total",
            "progress_percent",
            "error",
            "snapshot",
            "input_hash",
            "outputs",
            "parent",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]


class RunLaunchSerializer(serializers.Serializer):
    project = serializers.PrimaryKeyRelatedField(queryset=Project.objects.all())
    kind = serializers.ChoiceField(choices=LAUNCHABLE)
    config = serializers.DictField(
        required=False,
        default=dict,
        help_text="The run's config (training.launch). A loop stops before PPO when its reward model "
        'did not learn, unless the config has "train_policy_anyway": true.',
    )


class ExportFiltersSerializer(serializers.Serializer):
    rounds = serializers.ListField(child=serializers.IntegerField(min_value=0), required=False)
    checkpoints = serializers.ListField(child=serializers.IntegerField(min_value=0), required=False)
    annotators = serializers.ListField(
        child=serializers.CharField(max_length=150),
        required=False,
        help_text="Annotator ids as the exported data show them (a-...); admins may also give usernames.",
    )
    date_from = serializers.DateField(required=False, allow_null=True)
    date_to = serializers.DateField(required=False, allow_null=True)
    min_agreement = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    include_imported = serializers.BooleanField(required=False, default=True)
    exclude_flagged_annotators = serializers.BooleanField(required=False, default=True)


class ExportSerializer(serializers.ModelSerializer):
    filters = ExportFiltersSerializer(required=False)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Export
        fields = [
            "id",
            "project",
            "format",
            "filters",
            "licence",
            "status",
            "progress_done",
            "progress_total",
            "rows",
            "sha256",
            "error",
            "created_at",
            "finished_at",
            "download_url",
        ]
        read_only_fields = [
            "id",
            "status",
            "progress_done",
            "progress_total",
            "rows",
            "sha256",
            "error",
            "created_at",
            "finished_at",
        ]

    def get_download_url(self, obj) -> str | None:
        if obj.status != Export.Status.SUCCEEDED:
            return None
        return reverse("api-export-download", args=[obj.pk])

    def validate(self, attrs):
        filters = dict(attrs.get("filters") or {})
        request = self.context.get("request")
        try:
            filters["annotators"] = annotator_ids(
                attrs["project"],
                filters.get("annotators", []),
                usernames_allowed=request is not None and has_role(request.user, ADMIN),
            )
        except ValueError as exc:
            raise serializers.ValidationError({"filters": {"annotators": [str(exc)]}}) from exc
        try:
            attrs["filters"] = normalise_filters(filters)
        except (TypeError, ValueError) as exc:
            raise serializers.ValidationError({"filters": [str(exc)]}) from exc
        return attrs
