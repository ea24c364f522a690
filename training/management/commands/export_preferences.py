"""Export a project's preference data from the shell: ``manage.py export_preferences --project NAME --format F``."""

from __future__ import annotations

import shutil

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project
from training.exports import export_run, normalise_filters
from training.models import Export


def _ints(text: str | None) -> list[int]:
    try:
        return [int(part) for part in (text or "").replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise CommandError(f"expected comma-separated numbers, got {text!r}") from exc


class Command(BaseCommand):
    help = "Build a preference-data export (zip with data and dataset card) in this process, with a progress bar."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name.")
        parser.add_argument("--format", required=True, choices=Export.Format.values)
        parser.add_argument("--out", help="Copy the zip here (it is also kept under ARTIFACTS_DIR/exports/).")
        parser.add_argument("--rounds", help="Round numbers, comma-separated.")
        parser.add_argument("--checkpoints", help="Checkpoint versions, comma-separated.")
        parser.add_argument("--annotators", help="Usernames, comma-separated.")
        parser.add_argument("--date-from", help="First day (YYYY-MM-DD), included.")
        parser.add_argument("--date-to", help="Last day (YYYY-MM-DD), included.")
        parser.add_argument("--min-agreement", type=float, help="Drop comparisons with lower agreement.")
        parser.add_argument("--no-imported", action="store_true", help="Leave imported preference data out.")
        parser.add_argument(
            "--include-excluded-annotators",
            action="store_true",
            help="Keep annotators an admin excluded from snapshots.",
        )
        parser.add_argument("--licence", default="", help="Licence for the dataset card, e.g. cc-by-4.0.")

    def handle(self, *args, **opts):
        from tqdm import tqdm

        project = Project.objects.filter(name=opts["project"]).first()
        if project is None:
            raise CommandError(f"No project named {opts['project']!r}.")
        usernames = [u.strip() for u in (opts["annotators"] or "").split(",") if u.strip()]
        users = dict(get_user_model().objects.filter(username__in=usernames).values_list("username", "pk"))
        if missing := sorted(set(usernames) - set(users)):
            raise CommandError(f"Unknown annotators: {', '.join(missing)}.")
        try:
            filters = normalise_filters(
                {
                    "rounds": _ints(opts["rounds"]),
                    "checkpoints": _ints(opts["checkpoints"]),
                    "annotators": [users[u] for u in usernames],
                    "date_from": opts["date_from"],
                    "date_to": opts["date_to"],
                    "min_agreement": opts["min_agreement"],
                    "include_imported": not opts["no_imported"],
                    "exclude_flagged_annotators": not opts["include_excluded_annotators"],
                }
            )
        except ValueError as exc:
            raise CommandError(f"Bad filter: {exc}") from exc

        export = Export.objects.create(
            project=project, format=opts["format"], filters=filters, licence=opts["licence"].strip()
        )
        with tqdm(total=0, unit="row", disable=opts["verbosity"] == 0, file=self.stderr._out) as bar:

            def progress(done: int, total: int) -> None:
                if bar.total != total:
                    bar.reset(total=total)
                bar.update(done - bar.n)

            export = export_run(export, on_progress=progress)
        if export.status != Export.Status.SUCCEEDED:
            raise CommandError(f"Export #{export.pk} failed: {export.error}")
        path = export.uri
        if opts["out"]:
            path = shutil.copyfile(export.uri, opts["out"])
        self.stdout.write(f"Export #{export.pk}: {export.rows} rows, sha256 {export.sha256}\n{path}")
