"""The documents a newcomer reads: the README's tour answers as it says, its configuration table
names every setting, and the links between the documents lead somewhere."""

from __future__ import annotations

import json
import re
import shlex
from urllib.parse import urlsplit

from tests.helpers import ROOT, create_key

README = (ROOT / "README.md").read_text()
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    ROOT / "deploy" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]


def section(text: str, heading: str) -> str:
    """The text under a ``## `` heading, up to the next one."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def tour() -> list[tuple[str, str | None]]:
    """Each command of the tour's shell blocks, with the answer printed under it (or None)."""
    steps: list[tuple[str, str | None]] = []
    for block in re.findall(r"```sh\n(.*?)```", section(README, "A five-minute tour"), re.S):
        command: list[str] = []
        answer: list[str] = []
        for line in block.splitlines():
            if line.startswith("#"):
                answer.append(line[1:].strip())
                continue
            if command and (answer or command_complete(command)):
                steps.append(("\n".join(command), "".join(answer) or None))
                command, answer = [], []
            command.append(line)
        if command:
            steps.append(("\n".join(command), "".join(answer) or None))
    return steps


def command_complete(lines: list[str]) -> bool:
    try:
        shlex.split("\n".join(lines).replace("\\\n", " "), comments=True)
    except ValueError:  # a quote still open: the next line belongs to it
        return False
    return not lines[-1].endswith("\\")


def test_the_tour_answers_as_the_readme_says(app, client):
    steps = tour()
    assert sum(1 for command, _ in steps if command.startswith("curl")) >= 8
    key = None
    for command, documented in steps:
        words = shlex.split(command.replace("\\\n", " "), comments=True)
        if words[0].startswith("KEY="):  # KEY=$(flask --app wsgi keys create NAME --scope S ...)
            name, scope = words[words.index("create") + 1], words[words.index("--scope") + 1]
            key = create_key(app, name, scope)
            continue
        assert words[0] == "curl", command
        method, headers, data, url = None, {}, None, None
        rest = iter(words[1:])
        for word in rest:
            if word == "-X":
                method = next(rest)
            elif word == "-H":
                name, _, value = next(rest).partition(": ")
                headers[name] = value.replace("$KEY", key or "")
            elif word == "-d":
                data = next(rest)
            elif word.startswith("http"):
                url = urlsplit(word)
        response = client.open(
            f"{url.path}?{url.query}" if url.query else url.path,
            method=method or ("POST" if data is not None else "GET"),
            headers=headers,
            data=data,
        )
        assert documented is not None, command
        assert response.get_json() == json.loads(documented), command


def environment_variables() -> set[str]:
    """Every variable the settings and gunicorn's settings read."""
    config = (ROOT / "analytics" / "config.py").read_text()
    gunicorn = (ROOT / "analytics" / "gunicorn_conf.py").read_text()
    names = set(re.findall(r'(?:environ\.get\(|\(\s*environ,\s*)"([A-Z][A-Z0-9_]*)"', config))
    names |= set(re.findall(r'environ\.get\("([A-Z][A-Z0-9_]*)"', gunicorn))
    return names


def test_the_configuration_table_names_every_setting():
    table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section(README, "Configuration"), re.M))
    assert {"DATABASE_URL", "AUTH_MODE", "WEB_CONCURRENCY"} <= environment_variables()
    assert table == environment_variables()


def anchors(text: str) -> set[str]:
    """The ids GitHub gives the headings of a Markdown text."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_links_between_the_documents_lead_somewhere():
    broken = []
    for document in DOCUMENTS:
        text = document.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            if not linked.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
            elif (
                fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text())
            ):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []
