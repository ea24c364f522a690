from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project, Round
from annotation.simulation import simulate_round


class Command(BaseCommand):
    help = (
        "Play N simulated annotators on a round with a rule (shorter, longer, phrase:<text>, "
        "reward-model:<path>) and a noise level; they judge through the same services people use."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--round", type=int, help="Round number (default: the newest open round).")
        parser.add_argument("--annotators", type=int, default=3)
        parser.add_argument("--rule", default="shorter")
        parser.add_argument("--noise", type=float, default=0.0, help="Share of random answers, 0-1.")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--limit", type=int, help="Stop after this many judgments.")

    def handle(self, *args, project, round, annotators, rule, noise, seed, limit, **options):
        if not 0 <= noise <= 1:
            raise CommandError("--noise must be between 0 and 1.")
        try:
            project_obj = Project.objects.get(name=project)
        except Project.DoesNotExist:
            raise CommandError(f"No project named {project!r}.") from None
        rounds = project_obj.rounds.filter(status=Round.Status.OPEN)
        round_obj = rounds.filter(number=round).first() if round else rounds.order_by("-number").first()
        if round_obj is None:
            raise CommandError(f"{project_obj} has no open round{f' {round}' if round else ''}.")
        try:
            result = simulate_round(
                round=round_obj, annotators=annotators, rule=rule, noise=noise, seed=seed, limit=limit
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"{result.annotators} simulated annotators made {result.judgments} judgments on {round_obj}"
                + (f" ({result.refused} refused)" if result.refused else "")
            )
        )
