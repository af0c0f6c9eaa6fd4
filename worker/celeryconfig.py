"""Celery's configuration module (`app.config_from_object`): read from the
environment when a Celery program loads it."""

from __future__ import annotations

from worker.queueing.config import celery_config
from worker.settings import Settings

globals().update(celery_config(Settings()))
