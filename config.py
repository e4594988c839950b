"""The settings, for scripts that import ``config`` from the project's root: they live in
analytics/config.py, inside the package, so that an installed package carries them."""

from analytics.config import *  # noqa: F403
