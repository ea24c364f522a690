"""The Celery app: queue ``default`` for exports and statistics, ``gpu`` for generation and training.

Tasks live in ``training/tasks.py`` and import torch inside their bodies only, so
the web process (which imports the tasks to enqueue them) never loads torch.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("tandem")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
