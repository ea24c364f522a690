"""The Project admin's "Import prompts" and "Import preference data" pages.

Each page is a small form; the work is :mod:`annotation.importers`. A refused import
writes nothing and shows the bad rows on the form page, as does an import that
skipped bad rows; a clean one returns to the project with a summary message.

Hostile uploads get a page that says what is wrong, never a 500: the caps in settings
(``IMPORT_MAX_*``, stated under the file field) are enforced while the file streams, an
upload over ``IMPORT_MAX_UPLOAD_BYTES`` is dropped as it arrives (never stored whole), and a
request Django itself refuses (``DATA_UPLOAD_MAX_MEMORY_SIZE``, too many fields or files, a
malformed multipart body) is answered 413/400 on this page. That is why these views read
the request body themselves before the CSRF check: Django's CSRF middleware would read it
first, without the upload cap, and turn those refusals into a bare "Bad Request".
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import Http404, HttpRequest, HttpResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from annotation.importers import ImportResult, human_size, import_preferences, import_prompts
from annotation.models import Project, Prompt

# Bad rows also shown as messages (the full list is on the form page).
BAD_ROW_MESSAGES = 20


def limits_text() -> str:
    """The caps, as the upload pages state them."""
    return (
        f"Up to {settings.IMPORT_MAX_ROWS:,} rows, imported in one transaction: a bad row (unless "
        "skipped) or a file over a limit writes nothing. Limits: "
        f"{human_size(settings.IMPORT_MAX_UPLOAD_BYTES)} uploaded, "
        f"{human_size(settings.IMPORT_MAX_DECOMPRESSED_BYTES)} decompressed, "
        f"{human_size(settings.IMPORT_MAX_LINE_BYTES)} a line, "
        f"JSON nested {settings.IMPORT_MAX_NESTING} levels deep."
    )


class _UploadForm(forms.Form):
    formats = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["file"].help_text = f"{self.formats}, optionally gzipped (.gz). {limits_text()}"

    def clean_file(self):
        # The upload handler below stops a larger file as it arrives; this catches one read otherwise.
        upload = self.cleaned_data["file"]
        if upload.size > settings.IMPORT_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(_too_big_message())
        return upload


class PromptImportForm(_UploadForm):
    formats = "JSONL or CSV"
    file = forms.FileField()
    source = forms.CharField(
        required=False, max_length=200, help_text="Stored on each prompt; default: the file name."
    )
    split = forms.ChoiceField(
        choices=[("", "As each row says (train when unset)"), *Prompt.Split.choices], required=False
    )
    file_format = forms.ChoiceField(
        label="Format",
        choices=[("auto", "By file name (.csv is CSV, else JSONL)"), ("jsonl", "JSONL"), ("csv", "CSV")],
        initial="auto",
    )
    skip_bad = forms.BooleanField(
        required=False,
        label="Skip bad rows",
        help_text="Import the good rows; otherwise one bad row refuses the file.",
    )


class PreferenceImportForm(_UploadForm):
    formats = "JSONL"
    file = forms.FileField()
    data_format = forms.ChoiceField(
        label="Format",
        choices=[
            ("auto", "Detect per row"),
            ("hh-rlhf", "HH-RLHF (chosen/rejected dialogues)"),
            ("trl", "TRL (prompt/chosen/rejected)"),
        ],
        initial="auto",
    )
    name = forms.CharField(
        required=False,
        max_length=150,
        help_text='Judgments get source "imported:<name>"; default: the file name.',
    )
    skip_bad = forms.BooleanField(
        required=False,
        label="Skip bad rows",
        help_text="Import the good rows; otherwise one bad row refuses the file.",
    )


def _limits() -> dict[str, int]:
    return {
        "max_line_bytes": settings.IMPORT_MAX_LINE_BYTES,
        "max_nesting": settings.IMPORT_MAX_NESTING,
        "max_rows": settings.IMPORT_MAX_ROWS,
        "max_bytes": settings.IMPORT_MAX_DECOMPRESSED_BYTES,
    }


def _run_prompts(project: Project, upload, data: dict) -> ImportResult:
    return import_prompts(
        project=project,
        file=upload,
        filename=upload.name,
        source=data["source"] or None,
        split=data["split"] or None,
        file_format=data["file_format"],
        skip_bad=data["skip_bad"],
        **_limits(),
    )


def _run_preferences(project: Project, upload, data: dict) -> ImportResult:
    return import_preferences(
        project=project,
        file=upload,
        filename=upload.name,
        name=data["name"] or None,
        format=data["data_format"],
        skip_bad=data["skip_bad"],
        **_limits(),
    )


IMPORTS = {
    "prompts": ("Import prompts", PromptImportForm, _run_prompts),
    "preferences": ("Import preference data", PreferenceImportForm, _run_preferences),
}


def _project_for_change(model_admin, request: HttpRequest, object_id: str) -> Project:
    project = model_admin.get_object(request, unquote(object_id))
    if project is None:
        raise Http404("No such project.")
    if not model_admin.has_change_permission(request, project):
        raise PermissionDenied
    return project


def import_view(model_admin, request: HttpRequest, object_id: str, kind: str) -> HttpResponse:
    project = _project_for_change(model_admin, request, object_id)
    if request.method == "POST":
        refusal = _read_upload(request)
        if refusal is not None:
            status, message = refusal
            messages.error(request, message)
            return _page(model_admin, request, project, kind, IMPORTS[kind][1](), None, status=status)
    return _checked_import(request, model_admin, project, kind)


def _import(request: HttpRequest, model_admin, project: Project, kind: str) -> HttpResponse:
    _, form_class, run = IMPORTS[kind]
    result = None
    form = form_class(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        result = run(project, form.cleaned_data["file"], form.cleaned_data)
        _announce(request, result)
        if not result.refused and not result.bad:
            return redirect(reverse("admin:annotation_project_change", args=[project.pk]))
    return _page(model_admin, request, project, kind, form, result)


_checked_import = csrf_protect(_import)


def _page(model_admin, request, project, kind, form, result, *, status: int = 200) -> HttpResponse:
    title = IMPORTS[kind][0]
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{title} into {project}",
        "opts": model_admin.model._meta,
        "original": project,
        "has_view_permission": model_admin.has_view_permission(request, project),
        "form": form,
        "result": result,
    }
    return TemplateResponse(request, "admin/annotation/project/import_form.html", context, status=status)


class _CappedUpload(FileUploadHandler):
    """Stops an upload once its files pass ``IMPORT_MAX_UPLOAD_BYTES``: the rest of the request is
    read and dropped, and what was received of the file is closed and deleted."""

    def __init__(self, request: HttpRequest, cap: int):
        super().__init__(request)
        self.cap, self.received, self.exceeded = cap, 0, False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.cap:
            self.exceeded = True
            raise StopUpload(connection_reset=False)
        return raw_data  # on to Django's own handlers (memory, then a temporary file)

    def file_complete(self, file_size: int) -> None:
        return None


def _too_big_message() -> str:
    return (
        f"The file is larger than {human_size(settings.IMPORT_MAX_UPLOAD_BYTES)}, the most one upload "
        "takes: gzip it, or split it into smaller files. Nothing was imported."
    )


def _read_upload(request: HttpRequest) -> tuple[int, str] | None:
    """Parse the POST body under the upload cap; (status, message) when it cannot be taken."""
    capped = None
    if not hasattr(request, "_files"):  # nothing has read the body yet
        capped = _CappedUpload(request, settings.IMPORT_MAX_UPLOAD_BYTES)
        request.upload_handlers = [capped, *request.upload_handlers]
    try:
        request.POST, request.FILES  # noqa: B018  (reading them parses the body)
    except RequestDataTooBig:
        return 413, (
            f"The request's form fields are larger than {human_size(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)}, "
            "the most the site takes outside a file: send the data as the file. Nothing was imported."
        )
    except TooManyFieldsSent:
        return 400, (
            f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} form fields. "
            "Nothing was imported."
        )
    except TooManyFilesSent:
        return 400, (
            f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES:,} files; send one. "
            "Nothing was imported."
        )
    except (MultiPartParserError, UnreadablePostError) as exc:
        return 400, f"The upload could not be read ({exc or type(exc).__name__}). Nothing was imported."
    if capped is not None and capped.exceeded:
        return 413, _too_big_message()
    return None


def _announce(request: HttpRequest, result: ImportResult) -> None:
    if result.refused:
        messages.error(request, result.summary)
    elif result.skipped:
        messages.warning(request, result.summary)
    else:
        messages.success(request, result.summary)
    for line, reason in result.errors[:BAD_ROW_MESSAGES]:
        messages.warning(request, f"line {line}: {reason}")
    if result.bad > BAD_ROW_MESSAGES:
        messages.warning(request, f"... and {result.bad - BAD_ROW_MESSAGES} more bad rows.")


class ProjectImportsMixin:
    """Adds the two import pages to a Project ModelAdmin (buttons: templates/admin/annotation/project/change_form.html)."""

    def get_urls(self):
        def page(kind):
            # CSRF is checked inside, once the body is read under the upload cap (see the module doc).
            @csrf_exempt
            def view(request, object_id):
                return import_view(self, request, object_id, kind)

            return self.admin_site.admin_view(view)

        prefix = f"{self.model._meta.app_label}_{self.model._meta.model_name}"
        return [
            path("<path:object_id>/import-prompts/", page("prompts"), name=f"{prefix}_import_prompts"),
            path(
                "<path:object_id>/import-preferences/",
                page("preferences"),
                name=f"{prefix}_import_preferences",
            ),
            *super().get_urls(),
        ]
