"""The analytics API: an application factory that reads as a table of contents."""
from __future__ import annotations

import logging

from flask import Flask

from config import load_config


def create_app(test_config: dict | None = None) -> Flask:
    """Build the WSGI application from the environment, overridden by ``test_config``."""
    app = Flask(__name__)
    app.config.from_mapping(load_config().as_dict())
    if test_config:
        app.config.from_mapping(test_config)
    app.json.sort_keys = False

    configure_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_commands(app)
    return app


def configure_logging(app: Flask) -> None:
    level = getattr(logging, app.config["LOG_LEVEL"])
    app.logger.setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def register_extensions(app: Flask) -> None:
    from analytics import auth, committer, cors, db, inputs

    db.init_app(app)
    committer.init_app(app)
    cors.init_app(app)
    auth.init_app(app)  # access keys and rate limits, before any input is read
    inputs.init_app(app)
    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)


def register_blueprints(app: Flask) -> None:
    from analytics.api import batch, health, metrics, openapi, pages, sessions, track

    app.register_blueprint(track.bp)
    app.register_blueprint(batch.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(pages.bp)


def register_error_handlers(app: Flask) -> None:
    from analytics import errors

    errors.init_app(app)


def register_commands(app: Flask) -> None:
    from analytics import cli

    cli.init_app(app)
