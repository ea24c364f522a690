from django.contrib import admin

from training.models import Checkpoint, Export, Metric, PreferenceSnapshot, RewardModel, TrainingRun


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "origin", "parent", "produced_by", "created_at", "published_at"]
    list_filter = ["status", "origin", "project"]
    search_fields = ["project__name", "uri", "notes"]
    raw_id_fields = ["parent", "produced_by", "reward_model"]
    list_select_related = ["project", "parent__project", "produced_by"]


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["__str__", "project", "status", "stage", "progress_done", "progress_total", "created_at"]
    list_filter = ["kind", "status", "project"]
    search_fields = ["project__name", "error", "celery_task_id"]
    raw_id_fields = ["snapshot", "parent", "created_by"]
    list_select_related = ["project"]


@admin.register(Metric)
class MetricAdmin(admin.ModelAdmin):
    list_display = ["run", "name", "step", "value"]
    list_filter = ["name"]
    search_fields = ["name"]
    raw_id_fields = ["run"]


@admin.register(RewardModel)
class RewardModelAdmin(admin.ModelAdmin):
    list_display = ["__str__", "verdict", "eval_loss", "mean_margin", "learned", "created_at"]
    list_filter = ["learned", "project"]
    search_fields = ["uri", "project__name"]
    raw_id_fields = ["run", "base_checkpoint", "snapshot"]


@admin.register(PreferenceSnapshot)
class PreferenceSnapshotAdmin(admin.ModelAdmin):
    list_display = ["__str__", "project", "pair_count", "judgment_count", "created_at"]
    list_filter = ["project"]
    search_fields = ["sha256"]


@admin.register(Export)
class ExportAdmin(admin.ModelAdmin):
    list_display = ["__str__", "project", "status", "rows", "sha256", "created_by", "created_at"]
    list_filter = ["format", "status", "project"]
    search_fields = ["sha256", "licence"]
