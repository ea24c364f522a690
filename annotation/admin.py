from django.contrib import admin

from annotation.admin_imports import ProjectImportsMixin
from annotation.models import (
    AnnotatorProfile,
    Comparison,
    ComparisonItem,
    Judgment,
    Lease,
    Project,
    Prompt,
    Report,
    Response,
    Round,
    Skip,
)


@admin.register(Project)
class ProjectAdmin(ProjectImportsMixin, admin.ModelAdmin):
    list_display = ["name", "comparison_mode", "k", "overlap", "scale", "is_active", "created_at"]
    list_filter = ["comparison_mode", "scale", "is_active"]
    search_fields = ["name", "description"]
    filter_horizontal = ["annotators"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "preview", "project", "split", "source", "created_at"]
    list_filter = ["project", "split", "source"]
    search_fields = ["conversation", "source"]
    list_select_related = ["project"]


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "status",
        "generation_progress",
        "error",
        "created_at",
        "opened_at",
        "closed_at",
    ]
    list_filter = ["status", "project"]
    search_fields = ["project__name", "error"]
    filter_horizontal = ["checkpoints"]
    list_select_related = ["project", "generation_run"]
    raw_id_fields = ["generation_run"]
    actions = ["retry_failed_generation"]

    @admin.display(description="Generation")
    def generation_progress(self, obj):
        run = obj.generation_run
        if run is None:
            return "-"
        return f"{run.get_status_display()} {run.progress_done}/{run.progress_total}"

    @admin.action(description="Retry failed generation")
    def retry_failed_generation(self, request, queryset):
        from django.contrib import messages

        from training.rounds import round_retry
        from training.runs import QueueUnavailable

        retried = 0
        for round in queryset.filter(status=Round.Status.FAILED):
            try:
                round_retry(round=round)
            except QueueUnavailable as exc:
                self.message_user(request, f"{round}: {exc}", messages.ERROR)
                return
            retried += 1
        skipped = queryset.count() - retried
        self.message_user(
            request,
            f"Generation of {retried} round{'s' if retried != 1 else ''} queued again; it continues where it stopped."
            + (f" {skipped} not failed, left as they are." if skipped else ""),
            messages.SUCCESS if retried else messages.WARNING,
        )


@admin.register(Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ["id", "__str__", "round", "checkpoint", "sample_index", "token_count", "finish_reason"]
    list_filter = ["finish_reason", "round__project"]
    search_fields = ["text"]
    raw_id_fields = ["prompt", "round", "checkpoint"]
    list_select_related = ["round__project", "checkpoint__project"]


class ComparisonItemInline(admin.TabularInline):
    model = ComparisonItem
    raw_id_fields = ["response"]
    extra = 0


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ["id", "round", "prompt", "source", "is_gold", "judgment_count", "created_at"]
    list_filter = ["is_gold", "source", "round__project"]
    search_fields = ["prompt__conversation"]
    raw_id_fields = ["round", "prompt"]
    inlines = [ComparisonItemInline]
    list_select_related = ["round__project", "prompt"]


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["comparison", "annotator", "created_at", "expires_at"]
    list_filter = ["comparison__round__project"]
    search_fields = ["annotator__username"]
    raw_id_fields = ["comparison", "annotator"]


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ["id", "comparison", "annotator", "source", "strength", "is_tie", "both_bad", "created_at"]
    list_filter = ["source", "is_tie", "both_bad", "strength", "comparison__round__project"]
    search_fields = ["annotator__username", "rationale"]
    raw_id_fields = ["comparison", "annotator"]
    date_hierarchy = "created_at"
    list_select_related = ["annotator", "comparison"]


@admin.register(Skip)
class SkipAdmin(admin.ModelAdmin):
    list_display = ["comparison", "annotator", "reason", "created_at"]
    search_fields = ["annotator__username", "reason"]
    raw_id_fields = ["comparison", "annotator"]


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ["comparison", "annotator", "reason", "created_at", "resolved_at"]
    list_filter = ["resolved_at"]
    search_fields = ["annotator__username", "reason"]
    raw_id_fields = ["comparison", "annotator"]


@admin.register(AnnotatorProfile)
class AnnotatorProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "excluded_from_snapshots"]
    list_filter = ["excluded_from_snapshots"]
    search_fields = ["user__username"]
