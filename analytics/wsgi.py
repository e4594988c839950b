"""WSGI entry point of the installed package: ``gunicorn analytics.wsgi:app``."""

from analytics import create_app

app = create_app()
