"""WSGI entry point from the project's root: ``gunicorn wsgi:app`` and ``flask --app wsgi ...``
(installed elsewhere: ``gunicorn analytics.wsgi:app``, ``flask --app analytics ...``)."""

from analytics.wsgi import app

__all__ = ["app"]
