"""gunicorn's settings when it runs from the project's root (gunicorn reads this file from the
working folder): those of analytics/gunicorn_conf.py, which an installed package carries."""

from analytics.gunicorn_conf import *  # noqa: F403
