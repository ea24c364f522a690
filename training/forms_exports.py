"""The export form on /exports/: which project, which judgments, which format, which licence."""

from __future__ import annotations

from django import forms

from annotation.models import Project
from training.exports import annotator_ids
from training.models import Export
from webapp.roles import ADMIN, has_role


def _numbers(text: str, what: str) -> list[int]:
    try:
        return sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError:
        raise forms.ValidationError(f"List {what} as numbers separated by commas, e.g. 1, 2, 5.") from None


class ExportForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.order_by("name"))
    format = forms.ChoiceField(choices=Export.Format.choices, initial=Export.Format.TRL_CONVERSATIONAL)
    rounds = forms.CharField(required=False, help_text="Round numbers, e.g. 1, 2. Empty: every round.")
    checkpoints = forms.CharField(
        required=False, help_text="Checkpoint versions shown in the comparison, e.g. 3, 4. Empty: any."
    )
    annotators = forms.CharField(
        required=False,
        help_text="Annotator ids as the exported data show them (a-...), comma-separated. Empty: everyone.",
    )
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    min_agreement = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        widget=forms.NumberInput(attrs={"step": "0.05"}),
        help_text="Drop comparisons whose annotators agree less than this (0-1).",
    )
    include_imported = forms.BooleanField(required=False, initial=True, label="Include imported data")
    licence = forms.CharField(
        required=False, max_length=200, help_text="Written into the dataset card, e.g. cc-by-4.0."
    )

    def clean_rounds(self):
        return _numbers(self.cleaned_data["rounds"], "rounds")

    def clean_checkpoints(self):
        return _numbers(self.cleaned_data["checkpoints"], "checkpoint versions")

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.usernames_allowed = user is not None and has_role(user, ADMIN)
        if self.usernames_allowed:
            self.fields[
                "annotators"
            ].help_text = "Annotator ids (a-...) or usernames, comma-separated. Empty: everyone."

    def clean(self):
        data = super().clean()
        if data.get("project") is not None:
            try:
                data["annotators"] = annotator_ids(
                    data["project"],
                    data.get("annotators", "").split(","),
                    usernames_allowed=self.usernames_allowed,
                )
            except ValueError as error:
                self.add_error("annotators", str(error))
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            self.add_error("date_to", "The last day comes before the first.")
        return data

    def filters(self) -> dict:
        data = self.cleaned_data
        return {
            "rounds": data["rounds"],
            "checkpoints": data["checkpoints"],
            "annotators": data["annotators"],
            "date_from": data["date_from"].isoformat() if data["date_from"] else None,
            "date_to": data["date_to"].isoformat() if data["date_to"] else None,
            "min_agreement": data["min_agreement"],
            "include_imported": data["include_imported"],
        }
