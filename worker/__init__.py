"""The Celery app and its thin tasks: each takes an id and calls a service."""
