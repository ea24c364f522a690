"""The API under ``/api/``: token (or session) authentication, an OpenAPI schema at ``/api/schema/``.

Researchers read; admins write (researchers may also create exports: exporting is
reading). Annotators and users without a role get 403, anonymous requests 401.
Every list is paginated (``?page=``) and filtered by query parameters, validated
here (a bad value is a 400, never a 500). Writes go through the same services as
the pages: ``training.exports.export_create`` and ``training.launch.run_start``.
"""

from __future__ import annotations

from datetime import date

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch, QuerySet
from django.http import FileResponse
from django.urls import include, path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response as APIResponse
from rest_framework.routers import DefaultRouter

from annotation.models import Comparison, ComparisonItem, Judgment, Project, Prompt, Round
from training import serializers as s
from training.exports import export_create, export_file
from training.launch import run_start
from training.models import Checkpoint, Export, RewardModel, TrainingRun
from training.parsers import StorableJSONParser, api_error
from training.runs import QueueUnavailable, runs_reap_lost
from webapp.roles import ADMIN, RESEARCHER, has_role

# --- access ---------------------------------------------------------------------------------


class ResearchersReadAdminsWrite(permissions.BasePermission):
    """Read: researchers and admins. Write: admins (plus ``researcher_writes`` actions of the view)."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in permissions.SAFE_METHODS or getattr(view, "action", None) in getattr(
            view, "researcher_writes", ()
        ):
            return has_role(user, RESEARCHER, ADMIN)
        return has_role(user, ADMIN)


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The task queue cannot be reached."
    default_code = "queue_unavailable"


# --- query parameters -----------------------------------------------------------------------


def _param(request, name: str, cast, what: str):
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        return cast(raw)
    except (TypeError, ValueError):
        raise ValidationError({name: f"Expected {what}."}) from None


def _str(request, name):
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if "\x00" in value:
        raise ValidationError({name: "Null characters are not allowed."})
    return value


def _int(request, name):
    value = _param(request, name, int, "an integer")
    if value is not None and not -(2**63) < value < 2**63:
        raise ValidationError({name: "Out of range."})
    return value


def _bool(request, name):
    def cast(raw: str) -> bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValueError

    return _param(request, name, cast, "true or false")


def _date(request, name):
    return _param(request, name, date.fromisoformat, "a date (YYYY-MM-DD)")


def _choice(request, name, choices):
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if value not in choices:
        raise ValidationError({name: f"One of {', '.join(choices)}."})
    return value


def _filter(qs: QuerySet, **lookups) -> QuerySet:
    """``qs.filter`` with the lookups whose value was given (None means "not asked for")."""
    return qs.filter(**{k: v for k, v in lookups.items() if v is not None})


def P(name: str, type=OpenApiTypes.INT, description: str = "", enum=None) -> OpenApiParameter:
    return OpenApiParameter(name, type, OpenApiParameter.QUERY, description=description, enum=enum)


PROJECT = P("project", description="Project id.")


class _Base(viewsets.GenericViewSet):
    permission_classes = [ResearchersReadAdminsWrite]
    # JSON the database can store, or a 400 (training/parsers.py)
    parser_classes = [StorableJSONParser, FormParser, MultiPartParser]
    researcher_writes: tuple[str, ...] = ()

    def handle_exception(self, exc):
        return super().handle_exception(api_error(exc))


# --- resources ------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(parameters=[P("active", OpenApiTypes.BOOL), P("name", OpenApiTypes.STR)])
)
class ProjectViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin, _Base
):
    serializer_class = s.ProjectSerializer

    def get_queryset(self):
        r = self.request
        return _filter(Project.objects.order_by("id"), is_active=_bool(r, "active"), name=_str(r, "name"))


@extend_schema_view(
    list=extend_schema(
        parameters=[
            PROJECT,
            P("split", OpenApiTypes.STR, enum=Prompt.Split.values),
            P("source", OpenApiTypes.STR),
        ]
    )
)
class PromptViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, _Base):
    serializer_class = s.PromptSerializer

    def get_queryset(self):
        r = self.request
        return _filter(
            Prompt.objects.order_by("id"),
            project_id=_int(r, "project"),
            split=_choice(r, "split", Prompt.Split.values),
            source=_str(r, "source"),
        )


@extend_schema_view(
    list=extend_schema(
        parameters=[PROJECT, P("number"), P("status", OpenApiTypes.STR, enum=Round.Status.values)]
    )
)
class RoundViewSet(viewsets.ReadOnlyModelViewSet, _Base):
    serializer_class = s.RoundSerializer

    def get_queryset(self):
        r = self.request
        qs = Round.objects.prefetch_related("checkpoints").order_by("project_id", "number")
        return _filter(
            qs,
            project_id=_int(r, "project"),
            number=_int(r, "number"),
            status=_choice(r, "status", Round.Status.values),
        )


@extend_schema_view(
    list=extend_schema(
        parameters=[PROJECT, P("round", description="Round id."), P("is_gold", OpenApiTypes.BOOL)]
    )
)
class ComparisonViewSet(viewsets.ReadOnlyModelViewSet, _Base):
    serializer_class = s.ComparisonSerializer

    def get_queryset(self):
        r = self.request
        items = ComparisonItem.objects.select_related("response").order_by("position")
        qs = (
            Comparison.objects.select_related("prompt", "round")
            .prefetch_related(Prefetch("items", queryset=items))
            .order_by("id")
        )
        return _filter(
            qs,
            prompt__project_id=_int(r, "project"),
            round_id=_int(r, "round"),
            is_gold=_bool(r, "is_gold"),
        )


@extend_schema_view(
    list=extend_schema(
        parameters=[
            PROJECT,
            P("round", description="Round id."),
            P("comparison", description="Comparison id."),
            P("source", OpenApiTypes.STR, description='"human", "simulated" or "imported:<name>".'),
            P("created_after", OpenApiTypes.DATE, description="Recorded on or after this day."),
            P("created_before", OpenApiTypes.DATE, description="Recorded on or before this day."),
        ]
    )
)
class JudgmentViewSet(viewsets.ReadOnlyModelViewSet, _Base):
    serializer_class = s.JudgmentSerializer

    def get_queryset(self):
        r = self.request
        qs = Judgment.objects.select_related("comparison__prompt").order_by("id")
        return _filter(
            qs,
            comparison__prompt__project_id=_int(r, "project"),
            comparison__round_id=_int(r, "round"),
            comparison_id=_int(r, "comparison"),
            source=_str(r, "source"),
            created_at__date__gte=_date(r, "created_after"),
            created_at__date__lte=_date(r, "created_before"),
        )


@extend_schema_view(
    list=extend_schema(parameters=[PROJECT, P("status", OpenApiTypes.STR, enum=Checkpoint.Status.values)])
)
class CheckpointViewSet(viewsets.ReadOnlyModelViewSet, _Base):
    serializer_class = s.CheckpointSerializer

    def get_queryset(self):
        r = self.request
        return _filter(
            Checkpoint.objects.order_by("project_id", "version"),
            project_id=_int(r, "project"),
            status=_choice(r, "status", Checkpoint.Status.values),
        )


@extend_schema_view(list=extend_schema(parameters=[PROJECT, P("learned", OpenApiTypes.BOOL)]))
class RewardModelViewSet(viewsets.ReadOnlyModelViewSet, _Base):
    serializer_class = s.RewardModelSerializer

    def get_queryset(self):
        r = self.request
        return _filter(
            RewardModel.objects.order_by("project_id", "-created_at", "-id"),
            project_id=_int(r, "project"),
            learned=_bool(r, "learned"),
        )


@extend_schema_view(
    list=extend_schema(
        parameters=[
            PROJECT,
            P("kind", OpenApiTypes.STR, enum=TrainingRun.Kind.values),
            P("status", OpenApiTypes.STR, enum=TrainingRun.Status.values),
        ]
    ),
    create=extend_schema(
        summary="Launch a run (admins)",
        request=s.RunLaunchSerializer,
        responses={
            201: s.RunSerializer,
            503: OpenApiResponse(description="The task queue cannot be reached."),
        },
    ),
)
class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, _Base):
    serializer_class = s.RunSerializer

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authenticated and allowed from here on
        if request.method == "GET":
            runs_reap_lost()  # a client polling a run whose worker died sees it failed, not running forever

    def get_queryset(self):
        r = self.request
        return _filter(
            TrainingRun.objects.order_by("-created_at", "-id"),
            project_id=_int(r, "project"),
            kind=_choice(r, "kind", TrainingRun.Kind.values),
            status=_choice(r, "status", TrainingRun.Status.values),
        )

    def create(self, request, *args, **kwargs):
        form = s.RunLaunchSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            run = run_start(
                kind=data["kind"], project=data["project"], config=data["config"], created_by=request.user
            )
        except QueueUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from exc
        return APIResponse(s.RunSerializer(run).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            PROJECT,
            P("status", OpenApiTypes.STR, enum=Export.Status.values),
            P("export_format", OpenApiTypes.STR, enum=Export.Format.values),
        ]
    ),
    download=extend_schema(
        summary="Download the export's zip (data and dataset card)",
        responses={
            (200, "application/zip"): OpenApiResponse(response=OpenApiTypes.BINARY),
            404: OpenApiResponse(description="Not ready, failed, or gone."),
        },
    ),
)
class ExportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, _Base):
    serializer_class = s.ExportSerializer
    researcher_writes = ("create",)

    def get_queryset(self):
        r = self.request
        return _filter(
            Export.objects.select_related("project").order_by("-created_at", "-id"),
            project_id=_int(r, "project"),
            status=_choice(r, "status", Export.Status.values),
            format=_choice(r, "export_format", Export.Format.values),
        )

    def perform_create(self, serializer):
        data = serializer.validated_data
        try:
            serializer.instance = export_create(
                project=data["project"],
                format=data["format"],
                filters=data.get("filters"),
                licence=data.get("licence", ""),
                created_by=self.request.user,
            )
        except QueueUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    @action(detail=True, methods=["get"])
    def download(self, request, pk=None, format=None):  # format: the router's download.json route
        export = self.get_object()
        path = export_file(export)
        if path is None:
            raise NotFound("This export has no file to download (not finished, failed, or removed).")
        return FileResponse(
            open(path, "rb"), as_attachment=True, filename=path.name, content_type="application/zip"
        )


class APIRoot(DefaultRouter.APIRootView):
    permission_classes = [ResearchersReadAdminsWrite]


router = DefaultRouter()
router.APIRootView = APIRoot
router.register("projects", ProjectViewSet, basename="api-project")
router.register("prompts", PromptViewSet, basename="api-prompt")
router.register("rounds", RoundViewSet, basename="api-round")
router.register("comparisons", ComparisonViewSet, basename="api-comparison")
router.register("judgments", JudgmentViewSet, basename="api-judgment")
router.register("checkpoints", CheckpointViewSet, basename="api-checkpoint")
router.register("reward-models", RewardModelViewSet, basename="api-reward-model")
router.register("runs", RunViewSet, basename="api-run")
router.register("exports", ExportViewSet, basename="api-export")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include(router.urls)),
]
