# Two entry points: `make serve` (set up, migrate, serve on http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install migrate serve test test-fast lint

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

migrate: install
	$(BIN)/alembic upgrade head

serve: migrate
	$(BIN)/gunicorn wsgi:app

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# The quick loop while working: SQLite only, without gunicorn, nginx, browsers or long runs.
test-fast: install
	ANALYTICS_TEST_BACKENDS=sqlite $(BIN)/pytest -q -m "not live and not e2e and not slow" $(PYTEST_ARGS)

# ruff's lint and format check over the repository, and mypy over the package.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
