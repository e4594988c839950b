"""``flask --app wsgi <command>``: operator commands, registered on the app in init_app."""
from __future__ import annotations

from flask import Flask

COMMANDS: list = []


def command(func):
    """Register a click command defined below on every app."""
    COMMANDS.append(func)
    return func


def init_app(app: Flask) -> None:
    for cmd in COMMANDS:
        app.cli.add_command(cmd)
