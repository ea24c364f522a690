"""The Project admin's "Import prompts" and "Import preference data" pages.

Each page is a small form; the work is :mod:`annotation.importers`. A refused import
writes nothing and shows the bad rows on the form page, as does an import that
skipped bad rows; a clean one returns to the project with a summary message.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from annotation.importers import ImportResult, import_preferences, import_prompts
from annotation.models import Project, Prompt

# Bad rows also shown as messages (the full list is on the form page).
BAD_ROW_MESSAGES = 20


class PromptImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL or CSV, optionally gzipped (.gz).")
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


class PreferenceImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL, optionally gzipped (.gz).")
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


def _run_prompts(project: Project, upload, data: dict) -> ImportResult:
    return import_prompts(
        project=project,
        file=upload,
        filename=upload.name,
        source=data["source"] or None,
        split=data["split"] or None,
        file_format=data["file_format"],
        skip_bad=data["skip_bad"],
    )


def _run_preferences(project: Project, upload, data: dict) -> ImportResult:
    return import_preferences(
        project=project,
        file=upload,
        filename=upload.name,
        name=data["name"] or None,
        format=data["data_format"],
        skip_bad=data["skip_bad"],
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
    title, form_class, run = IMPORTS[kind]
    result = None
    form = form_class(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        result = run(project, form.cleaned_data["file"], form.cleaned_data)
        _announce(request, result)
        if not result.refused and not result.bad:
            return redirect(reverse("admin:annotation_project_change", args=[project.pk]))
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{title} into {project}",
        "opts": model_admin.model._meta,
        "original": project,
        "has_view_permission": model_admin.has_view_permission(request, project),
        "form": form,
        "result": result,
    }
    return TemplateResponse(request, "admin/annotation/project/import_form.html", context)


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
