from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        # Register the Celery tasks in every process, so training.runs.enqueue finds a run's
        # task by name (training.run_kinds) and no module that enqueues imports the tasks.
        from training import tasks  # noqa: F401
