"""manage.py import_preferences --project NAME FILE: external preference pairs as imported judgments."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from annotation.importers import PREFERENCE_FORMATS, import_preferences
from annotation.management.commands.import_prompts import progress_bar, project_named, readable_file, report


class Command(BaseCommand):
    help = (
        "Import preference data (JSONL, .gz accepted) as judgments of source 'imported:<name>': "
        "HH-RLHF rows {chosen, rejected} (whole '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogues) or TRL rows "
        "{prompt, chosen, rejected} (strings or conversational; optional margin). "
        "One bad row refuses the whole file unless --skip-bad."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="A .jsonl file, plain or gzipped.")
        parser.add_argument("--project", required=True, help="The project's name.")
        parser.add_argument("--format", dest="data_format", choices=PREFERENCE_FORMATS, default="auto")
        parser.add_argument(
            "--name", help="Source name, stored as 'imported:<name>' (default: the file's name)."
        )
        parser.add_argument(
            "--skip-bad", action="store_true", help="Import the good rows and report the bad ones."
        )

    def handle(self, *args, file, project, data_format, name, skip_bad, **options):
        path = readable_file(file)
        target = project_named(project)
        with progress_bar(path, self.stderr._out) as progress:  # tqdm draws with \r: the raw stream
            result = import_preferences(
                project=target, file=path, name=name, format=data_format, skip_bad=skip_bad, progress=progress
            )
        report(self, result)
