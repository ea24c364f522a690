"""The judgment form: what a browser posts (with or without JavaScript) -> an ``Answer``."""

from __future__ import annotations

import time
from string import ascii_uppercase

from django import forms

from annotation.judgments import Answer
from annotation.models import Judgment, Project

PAIRWISE_LIKERT = [
    ("a_much", "A is much better"),
    ("a_slight", "A is slightly better"),
    ("b_slight", "B is slightly better"),
    ("b_much", "B is much better"),
]
PAIRWISE_BINARY = [("a", "A is better"), ("b", "B is better")]
TIE = ("tie", "Tie")
SAME = "same"


def letters(n: int) -> list[str]:
    return list(ascii_uppercase[:n])


def choice_keys(project: Project) -> list[tuple[str, str, str]]:
    """(value, label, key) for the pairwise answer buttons, in the order they are shown."""
    scale = PAIRWISE_LIKERT if project.scale == Project.Scale.LIKERT4 else PAIRWISE_BINARY
    rows = [(value, label, str(i)) for i, (value, label) in enumerate(scale, start=1)]
    if project.allow_tie:
        rows.append((*TIE, "t"))
    return rows


class JudgmentForm(forms.Form):
    client_id = forms.UUIDField(error_messages={"required": "The page lost its submission id; reload it."})
    order = forms.CharField(widget=forms.HiddenInput)
    time_spent_ms = forms.IntegerField(required=False, min_value=0)
    shown_at = forms.IntegerField(required=False)  # server clock when rendered: time on task without JS
    both_bad = forms.BooleanField(required=False)
    rationale = forms.CharField(required=False, max_length=5000, widget=forms.Textarea)

    def __init__(self, data=None, *, project: Project, response_ids: list[int], initial=None):
        super().__init__(data, initial=initial)
        self.project = project
        self.response_ids = list(response_ids)
        self.pairwise = len(self.response_ids) == 2
        if self.pairwise:
            self.fields["choice"] = forms.ChoiceField(
                required=False, choices=[(v, label) for v, label, _ in choice_keys(project)]
            )
        else:
            ranks = [(str(i), str(i)) for i in range(1, len(self.response_ids) + 1)]
            for rid in self.response_ids:
                self.fields[f"rank_{rid}"] = forms.TypedChoiceField(
                    required=False, coerce=int, empty_value=None, choices=[("", "–"), *ranks]
                )
        n = len(self.response_ids)
        for i, _name in enumerate(project.criteria or []):
            self.fields[f"crit_{i}"] = forms.ChoiceField(
                required=False, choices=[("", "–"), *[(c, c) for c in letters(n)], (SAME, "No difference")]
            )
        self.fields["rationale"].required = project.rationale_required

    # -- validation --
    def clean_order(self) -> list[int]:
        order = _parse_order(self.cleaned_data["order"], self.response_ids)
        if order is None:
            raise forms.ValidationError("The page is out of date; reload it.")
        return order

    def clean_rationale(self) -> str:
        return self.cleaned_data["rationale"].strip()

    def clean(self):
        data = super().clean()
        order = data.get("order")
        if order is None:
            return data
        both_bad = bool(data.get("both_bad")) and self.project.allow_both_bad
        data["both_bad"] = both_bad
        if self.pairwise:
            data["answer_parts"] = self._pairwise(order, data.get("choice") or "", both_bad)
        else:
            data["answer_parts"] = self._kwise(order, both_bad)
        data["criteria"] = {
            name: (
                SAME if data.get(f"crit_{i}") == SAME else order[letters(len(order)).index(data[f"crit_{i}"])]
            )
            for i, name in enumerate(self.project.criteria or [])
            if data.get(f"crit_{i}")
        }
        if self.project.rationale_required and not data.get("rationale"):
            self.add_error("rationale", "This project asks for a short rationale.")
        return data

    def _pairwise(self, order: list[int], choice: str, both_bad: bool):
        a, b = order
        if not choice:
            if both_bad:
                return {"ranking": [sorted([a, b])], "strength": None, "is_tie": False}
            self.add_error(
                "choice", "Pick which response is better" + (", or tie." if self.project.allow_tie else ".")
            )
            return None
        if choice == "tie":
            return {"ranking": [sorted([a, b])], "strength": None, "is_tie": True}
        winner, loser = (a, b) if choice.startswith("a") else (b, a)
        strength = None
        if choice.endswith("_much"):
            strength = Judgment.Strength.MUCH.value
        elif choice.endswith("_slight"):
            strength = Judgment.Strength.SLIGHT.value
        return {"ranking": [[winner], [loser]], "strength": strength, "is_tie": False}

    def _kwise(self, order: list[int], both_bad: bool):
        ranks = {rid: self.cleaned_data.get(f"rank_{rid}") for rid in order}
        if all(r is None for r in ranks.values()) and both_bad:
            return {"ranking": [sorted(order)], "strength": None, "is_tie": False}
        missing = [letters(len(order))[i] for i, rid in enumerate(order) if ranks[rid] is None]
        if missing:
            self.add_error(None, f"Give every response a rank (missing: {', '.join(missing)}).")
            return None
        groups: dict[int, list[int]] = {}
        for rid in order:
            groups.setdefault(ranks[rid], []).append(rid)
        ranking = [sorted(groups[r]) for r in sorted(groups)]
        is_tie = any(len(g) > 1 for g in ranking)
        if is_tie and not self.project.allow_tie:
            self.add_error(None, "This project does not allow ties: give every response its own rank.")
            return None
        return {"ranking": ranking, "strength": None, "is_tie": is_tie}

    def answer(self) -> Answer:
        data = self.cleaned_data
        parts = data["answer_parts"]
        return Answer(
            ranking=parts["ranking"],
            strength=parts["strength"],
            is_tie=parts["is_tie"],
            both_bad=data["both_bad"],
            rationale=data.get("rationale", ""),
            criteria=data["criteria"],
        )

    def time_spent(self) -> int | None:
        data = self.cleaned_data
        if data.get("time_spent_ms") is not None:
            return data["time_spent_ms"]
        if data.get("shown_at"):
            return max(0, int(time.time() * 1000) - data["shown_at"])
        return None


def posted_order(data, response_ids: list[int]) -> list[int] | None:
    """The order a posted form was shown in, when it is a valid permutation of ``response_ids``."""
    raw = data.get("order") if data is not None else None
    return _parse_order(raw, response_ids) if raw else None


def _parse_order(raw, response_ids: list[int]) -> list[int] | None:
    try:
        values = [int(x) for x in str(raw).split(",") if x.strip()]
    except ValueError:
        return None
    return values if sorted(values) == sorted(response_ids) else None


def initial_from_judgment(judgment: Judgment, project: Project) -> dict:
    """Form values that reproduce ``judgment`` on the page (editing a recent judgment)."""
    order = list(judgment.order_shown)
    initial: dict = {
        "order": ",".join(map(str, order)),
        "rationale": judgment.rationale,
        "both_bad": judgment.both_bad,
    }
    if len(order) == 2:
        a = order[0]
        if judgment.is_tie:
            initial["choice"] = "tie"
        elif len(judgment.ranking) == 2:
            side = "a" if judgment.ranking[0][0] == a else "b"
            initial["choice"] = f"{side}_{judgment.strength}" if judgment.strength else side
    else:
        for rank, group in enumerate(judgment.ranking, start=1):
            if len(judgment.ranking) > 1 or judgment.is_tie:
                for rid in group:
                    initial[f"rank_{rid}"] = str(rank)
    names = letters(len(order))
    for i, name in enumerate(project.criteria or []):
        value = judgment.criteria.get(name)
        if value is not None:
            initial[f"crit_{i}"] = SAME if value == SAME else names[order.index(value)]
    return initial
