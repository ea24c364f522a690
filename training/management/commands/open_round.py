"""Open a project's next annotation round from the shell, queued or generated right here."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project
from training.models import Checkpoint


class Command(BaseCommand):
    help = (
        "Open the next round of a project: its checkpoints answer the chosen prompts on the gpu queue "
        "(or in this process with --wait), then comparisons are built and the round opens."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name.")
        parser.add_argument(
            "--checkpoint",
            type=int,
            action="append",
            dest="versions",
            metavar="V",
            help="Checkpoint version in play (repeat for several). Default: the newest published one.",
        )
        parser.add_argument("--split", choices=["train", "eval", "all"], default="train")
        parser.add_argument("--tag", help="Only prompts with this tag.")
        parser.add_argument("--sample", type=int, metavar="N", help="A random sample of N prompts (seeded).")
        parser.add_argument(
            "--responses-per-prompt",
            type=int,
            metavar="K",
            help="Responses per prompt from each checkpoint (default: the project's K with one checkpoint).",
        )
        parser.add_argument("--temperature", type=float, default=0.8, help="0 means greedy.")
        parser.add_argument("--top-p", type=float, default=0.95)
        parser.add_argument("--max-new-tokens", type=int, default=128)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--gold-share", type=float, default=0.0, help="Share of comparisons marked gold.")
        parser.add_argument(
            "--gold-answers",
            metavar="FILE",
            help='JSON file: {"<prompt id>": {"checkpoint": version} or {"sample_index": i}}.',
        )
        parser.add_argument(
            "--chunks", type=int, default=1, help="Split the work into N tasks (GPU workers)."
        )
        parser.add_argument("--device", help='"cpu", "cuda", "cuda:N" (default: CUDA when present).')
        parser.add_argument("--batch-size", type=int, default=8)
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Generate in this process with a progress bar instead of queueing.",
        )

    def handle(self, *args, **o):
        from training.rounds import round_open
        from training.runs import QueueUnavailable

        project = Project.objects.filter(name=o["project"]).first()
        if project is None:
            raise CommandError(f'No project named "{o["project"]}".')
        checkpoints = self._checkpoints(project, o["versions"])
        gold_answers = {}
        if o["gold_answers"]:
            try:
                with open(o["gold_answers"]) as fh:
                    gold_answers = json.load(fh)
            except (OSError, ValueError) as exc:
                raise CommandError(f"Could not read gold answers from {o['gold_answers']}: {exc}") from exc
        config = {
            "split": None if o["split"] == "all" else o["split"],
            "tag": o["tag"],
            "prompt_count": o["sample"],
            "samples_per_checkpoint": o["responses_per_prompt"],
            "temperature": o["temperature"],
            "top_p": o["top_p"],
            "max_new_tokens": o["max_new_tokens"],
            "seed": o["seed"],
            "gold_share": o["gold_share"],
            "gold_answers": gold_answers,
            "chunks": o["chunks"],
            "device": o["device"],
            "batch_size": o["batch_size"],
        }
        try:
            round = round_open(project=project, checkpoints=checkpoints, config=config, start=not o["wait"])
        except ValidationError as exc:
            raise CommandError(_describe(exc)) from exc
        except QueueUnavailable as exc:
            raise CommandError(str(exc)) from exc
        prompts = len(round.config["prompt_ids"])
        self.stdout.write(
            f"Round {round.number} of {project}: {prompts} prompts x {len(checkpoints)} checkpoint(s) x "
            f"{round.config['samples_per_checkpoint']} response(s)."
        )
        if not o["wait"]:
            self.stdout.write("Generation is queued on the gpu queue; the round opens when it is done.")
            return
        self._generate(round)

    def _checkpoints(self, project, versions):
        if not versions:
            newest = (
                project.checkpoints.filter(status=Checkpoint.Status.PUBLISHED).order_by("-version").first()
                or project.checkpoints.order_by("-version").first()
            )
            if newest is None:
                raise CommandError(f"{project} has no checkpoint; run install_base_model first.")
            return [newest]
        found = {c.version: c for c in project.checkpoints.filter(version__in=versions)}
        missing = sorted(set(versions) - set(found))
        if missing:
            raise CommandError(f"{project} has no checkpoint version {', '.join(map(str, missing))}.")
        return [found[v] for v in dict.fromkeys(versions)]

    def _generate(self, round):
        from tqdm import tqdm

        from training.rounds import round_generate
        from training.runs import generation_settle, running

        run_id = round.generation_run_id
        with tqdm(desc=f"Round {round.number}", unit="prompt", dynamic_ncols=True) as bar:

            def on_progress(done, total):
                bar.total = total
                bar.n = done
                bar.refresh()

            with running(run_id) as reporter:
                if reporter is not None:
                    round_generate(reporter=reporter, on_progress=on_progress)
        generation_settle(run_id)
        round.refresh_from_db()
        if round.status == round.Status.OPEN:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Round {round.number} is open with {round.comparisons.count()} comparisons."
                )
            )
        else:
            raise CommandError(f"Round {round.number} is {round.status}: {round.error}")


def _describe(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return " ".join(exc.messages)
