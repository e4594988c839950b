"""The test suite (see conftest.py for the fixtures and helpers.py for what tests share)."""
