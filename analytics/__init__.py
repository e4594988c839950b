"""The analytics API: an application factory that reads as a table of contents."""

from __future__ import annotations

from typing import Any

from flask import Flask

from analytics.config import load_config


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the WSGI application from the environment, overridden by ``test_config``."""
    app = Flask(__name__)
    app.config.from_mapping(load_config().as_dict())
    if test_config:
        app.config.from_mapping(test_config)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # the default provider has it

    configure_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_commands(app)
    return app


def configure_logging(app: Flask) -> None:
    from analytics import logs

    logs.configure(app)


def register_extensions(app: Flask) -> None:
    from analytics import auth, committer, cors, db, inputs, logs

    logs.init_app(app)  # first, so that every request has its id, refused ones too
    db.init_app(app)
    committer.init_app(app)
    cors.init_app(app)
    auth.init_app(app)  # access keys and rate limits, before any input is read
    inputs.init_app(app)
    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = app.config["TRUSTED_PROXIES"]
        # Flask documents wrapping wsgi_app this way; typeshed declares it a method.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n
        )
    from analytics.encoded_paths import EncodedIds

    app.wsgi_app = EncodedIds(app.wsgi_app)  # type: ignore[method-assign]  # ids with "/"


def register_blueprints(app: Flask) -> None:
    from analytics.api import (
        active_users,
        batch,
        export,
        health,
        metrics,
        openapi,
        pages,
        sessions,
        track,
        users,
    )

    app.register_blueprint(track.bp)
    app.register_blueprint(batch.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(active_users.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(export.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(pages.bp)


def register_error_handlers(app: Flask) -> None:
    from analytics import errors

    errors.init_app(app)


def register_commands(app: Flask) -> None:
    from analytics import cli

    cli.init_app(app)
