"""Render the API reference, docs/api.md, from the OpenAPI document the app serves.

    .venv/bin/python tools/api_reference.py > docs/api.md    # regenerate it
    .venv/bin/python tools/api_reference.py --check          # exit 1 when it is out of date

The document is the one GET /openapi.json answers on an app with the default settings, so the
limits it states are the defaults. tests/test_api_reference.py holds docs/api.md to it: the
reference is never edited by hand, it changes with analytics/api/openapi.py and
analytics/schemas.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"
COMMAND = ".venv/bin/python tools/api_reference.py > docs/api.md"
METHODS = ("get", "post", "put", "patch", "delete")
WIDTH = 100  # a JSON example longer than this is broken over lines
SHOWN_ENUM = 12  # longer lists of values (the time zones) are left to the document


def served_document() -> dict:
    """GET /openapi.json of an app with the default settings (an in-memory SQLite database,
    which answering the document does not touch)."""
    sys.path.insert(0, str(ROOT))
    from analytics import create_app
    from config import load_config

    settings = load_config({"APP_ENV": "testing"}).as_dict()
    app = create_app({**settings, "DATABASE_URL": "sqlite://"})
    try:
        response = app.test_client().get("/openapi.json")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()
    finally:
        app.extensions["analytics.db"]["engine"].dispose()


def anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def cell(text: str) -> str:
    """Text that fits in one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def code(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"`{text}`"


def span(low: int | None, high: int | None, unit: str) -> str:
    """How many characters or items are allowed, in words ("" when any number is)."""
    if low and high is not None:
        return f", {low}–{high} {unit}"
    if high is not None:
        return f", at most {high} {unit}"
    if low == 1:
        return ", not empty"
    if low:
        return f", at least {low} {unit}"
    return ""


def dump(value, indent: str = "") -> str:
    """JSON, one line where it fits, else one member a line (recursively)."""
    compact = json.dumps(value, ensure_ascii=False)
    if len(indent) + len(compact) <= WIDTH or not isinstance(value, (dict, list)) or not value:
        return compact
    inner = indent + "  "
    if isinstance(value, dict):
        members = [f"{inner}{json.dumps(k)}: {dump(v, inner).lstrip()}" for k, v in value.items()]
        return "{\n" + ",\n".join(members) + f"\n{indent}}}"
    return "[\n" + ",\n".join(inner + dump(v, inner) for v in value) + f"\n{indent}]"


class Reference:
    """One document, rendered."""

    def __init__(self, document: dict):
        self.document = document
        self.schemas = document.get("components", {}).get("schemas", {})
        self.inlined: set[str] = set()  # schemas shown where a request body uses them

    def resolve(self, schema: dict) -> tuple[str | None, dict]:
        ref = schema.get("$ref")
        if ref is None:
            return None, schema
        name = ref.rsplit("/", 1)[1]
        return name, self.schemas[name]

    def link(self, name: str) -> str:
        return f"[{name}](#{anchor(name)})"

    def type_text(self, schema: dict) -> str:
        """A field's type and constraints, in a few words."""
        name, schema = self.resolve(schema)
        if name is not None:
            return self.link(name)
        kind = schema.get("type")
        if kind == "array":
            text = f"array of {self.type_text(schema.get('items', {}))}"
            text += span(schema.get("minItems"), schema.get("maxItems"), "items")
        elif kind is None:
            text = "any JSON value"
        else:
            text = kind
            if "format" in schema:
                text += f" ({schema['format']})"
        if "enum" in schema:
            values = schema["enum"]
            if len(values) <= SHOWN_ENUM:
                text += ": " + ", ".join(code(value) for value in values)
            else:
                text += " from a fixed list (see /openapi.json)"
        text += span(schema.get("minLength"), schema.get("maxLength"), "characters")
        if "minimum" in schema:
            text += f", at least {schema['minimum']}"
        excluded = schema.get("not", {}).get("enum")
        if excluded:
            text += ", not " + ", ".join(code(value) for value in excluded)
        if schema.get("nullable"):
            text += ", or null"
        if schema.get("default") is not None:
            text += f"; default {code(schema['default'])}"
        return text

    @staticmethod
    def described(schema: dict, description: str | None = None) -> str:
        text = description if description is not None else schema.get("description", "")
        example = schema.get("example")
        if example is not None and "enum" not in schema:
            text = f"{text} Example: {code(example)}" if text else f"Example: {code(example)}"
        return cell(text)

    def fields_table(self, schema: dict) -> list[str]:
        required = set(schema.get("required", []))
        lines = ["| field | type | required | description |", "| --- | --- | --- | --- |"]
        for field, prop in schema.get("properties", {}).items():
            _, resolved = self.resolve(prop)
            lines.append(
                f"| `{field}` | {cell(self.type_text(prop))} | "
                f"{'yes' if field in required else 'no'} | {self.described(resolved)} |"
            )
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            lines.append(
                f"| *any other name* | {cell(self.type_text(extra))} | no | "
                f"{self.described(extra)} |"
            )
        return lines

    def examples(self, title: str, media: dict) -> list[str]:
        """The media type's example(s) as code blocks."""
        found = []
        if "example" in media:
            found.append((title, media["example"]))
        for example in media.get("examples", {}).values():
            summary = example.get("summary", "example")
            found.append((f"{title}, {summary[:1].lower()}{summary[1:]}", example["value"]))
        lines = []
        for label, value in found:
            language = "json" if not isinstance(value, str) else "text"
            # Line ends as Markdown has them (the CSV example's are CRLF, as the description says).
            text = (
                value.replace("\r\n", "\n").rstrip("\n") if isinstance(value, str) else dump(value)
            )
            lines += [f"{label}:", "", f"```{language}", text, "```", ""]
        return lines

    def parameters(self, operation: dict) -> list[str]:
        parameters = operation.get("parameters", [])
        if not parameters:
            return []
        lines = [
            "**Parameters**",
            "",
            "| name | in | required | type | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for parameter in parameters:
            schema = parameter.get("schema", {})
            description = parameter.get("description", "")
            if "example" in parameter:
                schema = {**schema, "example": parameter["example"]}
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | "
                f"{'yes' if parameter.get('required') else 'no'} | "
                f"{cell(self.type_text(schema))} | {self.described(schema, description)} |"
            )
        return lines + [""]

    def request_body(self, operation: dict) -> list[str]:
        body = operation.get("requestBody")
        if not body:
            return []
        content = body.get("content", {})
        kinds = ", ".join(f"`{media_type}`" for media_type in content)
        required = "required" if body.get("required") else "optional"
        lines = [f"**Request body** ({required}): {kinds}", ""]
        shown: set[str] = set()
        for media_type, media in content.items():
            name, schema = self.resolve(media.get("schema", {}))
            if name is not None and name not in shown:
                shown.add(name)
                self.inlined.add(name)
                lines += [f"`{media_type}`: {name}.", ""]
                if schema.get("description"):
                    lines += [cell(schema["description"]), ""]
                lines += self.fields_table(schema) + [""]
            elif name is None and schema.get("description"):
                lines += [f"`{media_type}`: {cell(schema['description'])}", ""]
            lines += self.examples(f"Example (`{media_type}`)", media)
        return lines

    def responses(self, operation: dict) -> list[str]:
        responses = operation.get("responses", {})
        lines = [
            "**Responses**",
            "",
            "| status | description | body |",
            "| --- | --- | --- |",
        ]
        examples: list[str] = []
        for status in sorted(responses, key=lambda s: (not s.isdigit(), s)):
            response = responses[status]
            description = response.get("description", "")
            headers = response.get("headers", {})
            if headers:
                description = (
                    description.rstrip(".")
                    + ". Headers: "
                    + ", ".join(f"`{h}`" for h in headers)
                    + "."
                )
            bodies = []
            for media_type, media in response.get("content", {}).items():
                name, schema = self.resolve(media.get("schema", {}))
                bodies.append(f"`{media_type}` {self.link(name)}" if name else f"`{media_type}`")
                examples += self.examples(f"{status} (`{media_type}`)", media)
            lines.append(f"| {status} | {cell(description)} | {', '.join(bodies)} |")
        return lines + [""] + examples

    def operation(self, method: str, path: str, operation: dict) -> list[str]:
        lines = [f"## {method.upper()} {path}", "", f"**{operation.get('summary', '')}**", ""]
        if operation.get("description"):
            lines += [operation["description"].strip(), ""]
        return (
            lines
            + self.parameters(operation)
            + self.request_body(operation)
            + self.responses(operation)
        )

    def security_schemes(self) -> list[str]:
        schemes = self.document.get("components", {}).get("securitySchemes", {})
        if not schemes:
            return []
        lines = ["## Access keys", "", "| scheme | how | description |", "| --- | --- | --- |"]
        for name, scheme in schemes.items():
            if scheme["type"] == "http":
                how = f"`Authorization: {scheme['scheme'].capitalize()} <key>`"
            else:
                how = f"{scheme['in']} parameter `{scheme['name']}`"
            lines.append(f"| `{name}` | {how} | {cell(scheme.get('description', ''))} |")
        return lines + [""]

    def render(self) -> str:
        info = self.document["info"]
        operations = [
            (method, path, operation)
            for path, item in self.document["paths"].items()
            for method, operation in item.items()
            if method in METHODS
        ]
        lines = [
            f"# {info['title']}: reference",
            "",
            f"<!-- Generated from GET /openapi.json by tools/api_reference.py: do not edit. "
            f"Regenerate with `{COMMAND}`. -->",
            "",
            f"Version {info['version']}. The same document is served at `GET /openapi.json` and "
            "rendered at `GET /docs`. Limits that are settings are shown with their defaults.",
            "",
            info.get("description", "").strip(),
            "",
            "## Endpoints",
            "",
        ]
        for method, path, operation in operations:
            heading = f"{method.upper()} {path}"
            lines.append(f"- [{heading}](#{anchor(heading)}): {operation.get('summary', '')}")
        lines.append("")
        lines += self.security_schemes()
        for method, path, operation in operations:
            lines += self.operation(method, path, operation)
        lines += ["## Schemas", "", "The bodies of the answers above.", ""]
        for name, schema in self.schemas.items():
            if name in self.inlined:
                continue
            lines += [f"### {name}", ""]
            if schema.get("description"):
                lines += [cell(schema["description"]), ""]
            lines += self.fields_table(schema) + [""]
        return "\n".join(lines).rstrip("\n") + "\n"


def render(document: dict) -> str:
    """docs/api.md for this OpenAPI document."""
    return Reference(document).render()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when docs/api.md is not what would be written"
    )
    args = parser.parse_args()
    text = render(served_document())
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"docs/api.md is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
