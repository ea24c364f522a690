"""manage.py import_prompts --project NAME FILE: prompts from JSONL or CSV (plain or gzip)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotation.importers import PROMPT_FORMATS, ImportResult, import_prompts
from annotation.models import Project, Prompt

# Files smaller than this import in about a second: no progress bar.
PROGRESS_MIN_BYTES = 1024 * 1024


def project_named(name: str) -> Project:
    try:
        return Project.objects.get(name=name)
    except Project.DoesNotExist:
        raise CommandError(f"No project named {name!r}.") from None


def readable_file(path: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"No such file: {path}")
    return file


@contextmanager
def progress_bar(path: Path, stderr):
    """A callback for the importers' ``progress`` that draws a byte-count bar on stderr."""
    size = path.stat().st_size
    bar = tqdm(
        total=size, unit="B", unit_scale=True, file=stderr, disable=size < PROGRESS_MIN_BYTES, leave=False
    )
    try:
        yield lambda done: bar.update(done - bar.n)
    finally:
        bar.close()


def report(command: BaseCommand, result: ImportResult) -> None:
    """Print every reported bad row and the summary; exit non-zero when the import was refused."""
    for line, reason in result.errors:
        command.stdout.write(f"line {line}: {reason}")
    if result.bad > len(result.errors):
        command.stdout.write(f"... and {result.bad - len(result.errors)} more bad rows")
    if result.refused:
        raise CommandError(result.summary)
    style = command.style.WARNING if result.skipped else command.style.SUCCESS
    command.stdout.write(style(result.summary))


class Command(BaseCommand):
    help = (
        "Import prompts into a project from JSONL or CSV (.gz accepted). A row gives 'prompt' (a string) "
        "or 'messages' (a list of {role, content} ending with a user turn), optionally 'split' "
        "(train|eval) and 'tags'. One bad row refuses the whole file unless --skip-bad."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="A .jsonl, .csv, or either gzipped.")
        parser.add_argument("--project", required=True, help="The project's name.")
        parser.add_argument("--source", help="Stored as each prompt's source (default: the file's name).")
        parser.add_argument(
            "--split", choices=Prompt.Split.values, help="Split for rows that give none (default: train)."
        )
        parser.add_argument("--format", dest="file_format", choices=PROMPT_FORMATS, default="auto")
        parser.add_argument(
            "--skip-bad", action="store_true", help="Import the good rows and report the bad ones."
        )

    def handle(self, *args, file, project, source, split, file_format, skip_bad, **options):
        path = readable_file(file)
        target = project_named(project)
        with progress_bar(path, self.stderr._out) as progress:  # tqdm draws with \r: the raw stream
            result = import_prompts(
                project=target,
                file=path,
                source=source,
                split=split,
                file_format=file_format,
                skip_bad=skip_bad,
                progress=progress,
            )
        report(self, result)
