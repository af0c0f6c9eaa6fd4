"""Celery's configuration module (`app.config_from_object`): read from the
environment when a Celery program loads it."""

from __future__ import annotations

from worker.queueing.config import celery_config as _celery_config
from worker.settings import Settings as _Settings

globals().update(_celery_config(_Settings()))
