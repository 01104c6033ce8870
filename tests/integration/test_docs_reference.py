"""The reference pages say what the product has, no more and no less: every setting in
docs/configuration.md with its default, every command line option in docs/cli.md under its
command, every REST route of the running server's OpenAPI in docs/api.md. A setting, option
or route added without its documentation fails here, and so does one documented that is gone.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer.main
import yaml
from pydantic import BaseModel

from ingestlayer.cli import app
from ingestlayer.config import Settings
from ingestlayer.destinations.registry import DESTINATIONS
from ingestlayer.pipeline import config as pipeline_config
from ingestlayer.pipeline.steps.registry import STEPS
from ingestlayer.sources.config import SourceConfig
from tests.support.server import RunningServer

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "ingestlayer"
ENV_NAME = re.compile(r"\bINGESTLAYER_[A-Z0-9_]*[A-Z0-9]\b")
# An environment variable the server reads that is not one of its own INGESTLAYER_* settings.
ENV_READ = re.compile(r"""environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""")
# Settings fields no variable sets: the API contract's limits and the engine's batch sizes.
FIXED_FIELDS = {
    "ingest_batch_max",
    "delivery_batch",
    "route_batch",
    "max_event_bytes",
    "max_request_bytes",
    "max_batch_items",
    "extra",
}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def source_text() -> str:
    return "\n".join(read(p) for p in sorted(SRC.rglob("*.py")))


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def table_rows(text: str) -> Iterator[list[str]]:
    """The cells of every Markdown table row of ``text`` (separator rows left out)."""
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-|: ]+\|?", line.strip()):
            yield [cell.strip() for cell in line.strip().strip("|").split(" | ")]


# --- settings -------------------------------------------------------------------------------------


def test_every_variable_the_server_reads_is_documented() -> None:
    code = source_text()
    configuration = read(DOCS / "configuration.md")
    every_page = "\n".join(read(p) for p in doc_pages())
    read_by_server = set(ENV_NAME.findall(code))
    assert "INGESTLAYER_DATABASE_URL" in read_by_server  # the pattern finds them
    undocumented = sorted(n for n in read_by_server if f"`{n}`" not in configuration)
    assert not undocumented, f"read by the server, missing from docs/configuration.md: {undocumented}"
    others = set(ENV_READ.findall(code)) - read_by_server
    assert {"FORWARDED_ALLOW_IPS", "COLUMNS"} <= others
    assert not sorted(n for n in others if f"`{n}`" not in every_page), others


def test_every_documented_variable_exists() -> None:
    """A variable the docs name is read by the server, or by the SDKs and tests they describe."""
    readers = source_text() + "".join(
        read(p)
        for folder in (ROOT / "sdk" / "typescript" / "src", ROOT / "sdk" / "typescript" / "test-support")
        for p in sorted(folder.rglob("*.ts"))
    )
    readers += "".join(read(p) for p in sorted((ROOT / "tests").rglob("*.py")))
    for page in doc_pages():
        for name in set(ENV_NAME.findall(read(page))):
            if name == "INGESTLAYER_WEBHOOK_SECRET":  # the receiver's own variable in the examples
                continue
            assert name in readers, f"{page.relative_to(ROOT)} names {name}, which nothing reads"


def documented_defaults() -> dict[str, str]:
    """Each variable of configuration.md's tables → its default cell (a row may name several:
    `A`, `B` | `1`, `2`)."""
    defaults = {}
    for cells in table_rows(read(DOCS / "configuration.md")):
        names = re.findall(r"`(\w+)`", cells[0])
        if not names or len(cells) < 3 or not all(n.isupper() for n in names):
            continue
        values = cells[1].split(", ") if len(names) > 1 else [cells[1]]
        if len(values) == 1:  # one default for them all
            values *= len(names)
        assert len(values) == len(names), cells
        defaults.update(zip(names, values, strict=True))
    return defaults


def as_documented(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_has_a_variable_documented_with_its_default() -> None:
    config_source = read(SRC / "config.py")
    defaults = documented_defaults()
    for f in dataclasses.fields(Settings):
        if f.name in FIXED_FIELDS:
            continue
        name = f"INGESTLAYER_{f.name.upper()}"
        # A field no variable sets belongs in FIXED_FIELDS.
        assert f'"{name}"' in config_source, f"Settings.{f.name} is read from no variable"
        assert name in defaults, f"{name} has no row in docs/configuration.md"
        default = f.default if f.default is not dataclasses.MISSING else None
        cell = defaults[name]
        if default is None or default == ():
            # Unset by default: the cell says so, or what is computed instead; never a bare value.
            assert not re.fullmatch(r"`[^`]*`", cell), (name, cell)
        else:
            assert cell.startswith(f"`{as_documented(default)}`"), (name, cell, default)


# --- command line ---------------------------------------------------------------------------------


def cli_commands() -> Iterator[tuple[str, Any]]:
    def walk(command: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), command

    yield from walk(typer.main.get_command(app), [])


def cli_sections() -> dict[str, str]:
    """docs/cli.md's sections by heading: "## `replay [DELIVERY_ID]`" → its text."""
    parts = re.split(r"^## (.+)$", read(DOCS / "cli.md"), flags=re.M)
    return {heading.strip("` "): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def option_rows(section: str) -> dict[str, str]:
    """Each option a section's table names (`-f`, `--file`, `--no-prune`) → its row."""
    rows = {}
    for cells in table_rows(section):
        for option in re.findall(r"`(--?[a-z][a-z-]*)`", cells[0]):
            rows[option] = " | ".join(cells)
    return rows


def test_every_cli_option_is_in_docs_cli_md_with_its_default() -> None:
    sections = cli_sections()
    common = option_rows(sections["Common options"])
    commands = dict(cli_commands())
    assert {"serve", "apply", "tail", "secrets set"} <= set(commands)
    for path, command in commands.items():
        heading = next((h for h in sections if h == path or h.startswith(path + " ")), None)
        assert heading is not None, f"docs/cli.md has no section for `{path}`"
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        for argument in arguments:
            metavar = argument.metavar or argument.name.upper()
            assert metavar in heading.split()[len(path.split()) :] or f"[{metavar}]" in heading, (
                path,
                metavar,
            )
        rows = option_rows(sections[heading])
        options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
        names = {n for p in options for n in [*p.opts, *p.secondary_opts]}
        assert set(rows) == names, f"`{path}`: documented {sorted(rows)}, has {sorted(names)}"
        for option in options:
            row = rows[option.opts[0]]
            if "Common options" in row:
                row = common[option.opts[0]]
            if option.envvar:
                assert f"`{option.envvar}`" in row, (path, option.opts, row)
            default = option.default
            if default is None or isinstance(default, bool):
                continue
            assert f"`{default}`" in row.split(" | ")[1], (path, option.opts, default, row)


# --- REST API -------------------------------------------------------------------------------------

METHODS = "GET|HEAD|POST|PUT|PATCH|DELETE"
ROUTE = re.compile(rf"`((?:{METHODS})(?:/(?:{METHODS}))*) (/(?:[^`?\s{{]|\{{[^}}]*\}})*)")


def routes_in(text: str) -> set[tuple[str, str]]:
    """(method, path) for each `GET/PUT /v1/x/{name or id}` in ``text``, parameters as {}."""
    found = set()
    for methods, path in ROUTE.findall(text):
        for method in methods.split("/"):
            found.add((method, re.sub(r"\{[^}]*\}", "{}", path)))
    return found


async def test_every_route_of_the_openapi_is_in_docs_api_md_and_back(server: RunningServer) -> None:
    status, spec = await server.request("GET", "/openapi.json")
    assert status == 200
    served = {
        (method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
        for path, operations in spec["paths"].items()
        for method in operations
    }
    documented = routes_in(read(DOCS / "api.md"))
    assert ("POST", "/v1/events") in served and ("DELETE", "/v1/entities/{}/{}") in documented
    assert not sorted(served - documented), f"served, not in docs/api.md: {sorted(served - documented)}"
    assert not sorted(documented - served), f"in docs/api.md, not served: {sorted(documented - served)}"


# --- YAML keys of steps and destinations ------------------------------------------------------------

# Where each step and destination kind is documented: its own page, else docs/pipelines.md.
KIND_PAGES = {
    **{name: DOCS / "steps" / f"{name.replace('.', '-')}.md" for name in STEPS.names()},
    **{name: DOCS / "destinations" / f"{name}.md" for name in DESTINATIONS.names()},
}


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's value is (``Provider``, ``Provider | None``); not those in a list."""
    if typing.get_origin(annotation) in (list, dict):
        return []
    options = typing.get_args(annotation) or (annotation,)
    return [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]


def list_item_models(annotation: Any) -> list[type[BaseModel]]:
    if typing.get_origin(annotation) is not list:
        return []
    return [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def model_keys(model: type[BaseModel]) -> dict[str, Any]:
    """YAML key → default (REQUIRED when it has none) of ``model`` and of the models nested in it
    as a value (enrich.person's `provider: {url, …}`)."""
    keys: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        keys[f.alias or name] = REQUIRED if f.is_required() else f.get_default(call_default_factory=True)
        for sub in nested_models(f.annotation):
            keys.update(model_keys(sub))
    return keys


REQUIRED = object()


def key_tables(text: str) -> dict[str, list[str]]:
    """The rows of the page's key tables (headed `| field | default |` or `| setting | default |`):
    each key → its row's cells (key, default, meaning)."""
    rows: dict[str, list[str]] = {}
    in_keys = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_keys = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) >= 2 and cells[0] in ("field", "setting") and cells[1] == "default":
            in_keys = True
        elif in_keys and not re.fullmatch(r"[-|: ]+", line.strip()):
            for key in re.findall(r"`([a-z_]+)`", cells[0]):
                rows[key] = cells
    return rows


def kind_model(name: str) -> type[BaseModel]:
    registry = STEPS if name in STEPS else DESTINATIONS
    model: type[BaseModel] = registry.get(name).config_model
    return model


def test_every_yaml_key_of_steps_and_destinations_is_documented_with_its_default() -> None:
    code_spans = re.findall(r"`([^`]*)`", read(DOCS / "pipelines.md"))
    for name, page in KIND_PAGES.items():
        keys = model_keys(kind_model(name))
        if not page.exists():  # documented in pipelines.md, in prose
            missing = [k for k in keys if not any(re.search(rf"\b{k}\b", span) for span in code_spans)]
            assert not missing, f"{name}: keys not in docs/pipelines.md: {missing}"
            continue
        rows = key_tables(read(page))
        # The keys of a list's items (classify's `rules: [{label, any, fields}]`) are described in
        # the list's row.
        for field_name, f in kind_model(name).model_fields.items():
            for item in list_item_models(f.annotation):
                row = " ".join(rows.get(f.alias or field_name, []))
                for key in model_keys(item):
                    assert re.search(rf"\b{key}\b", row), f"{name}: {key} of {field_name} not in {row!r}"
        undocumented, unknown = sorted(set(keys) - set(rows)), sorted(set(rows) - set(keys))
        assert not undocumented, f"{name}: keys not in {page.name}'s table: {undocumented}"
        assert not unknown, f"{name}: {page.name} lists keys the parser refuses: {unknown}"
        for key, cells in rows.items():
            default, cell = keys[key], cells[1]
            literal = re.match(r"`([^`]*)`", cell)
            if default is REQUIRED:
                assert cell.startswith("required"), (name, key, cell)
            elif literal and default is not None:
                assert yaml.safe_load(literal.group(1)) == default, (name, key, cell, default)


def test_every_key_of_a_pipeline_and_of_its_destinations_is_documented() -> None:
    code_spans = re.findall(r"`([^`]*)`", read(DOCS / "pipelines.md"))
    keys = [*pipeline_config._PipelineModel.model_fields, *pipeline_config.META_KEYS]
    keys += list(SourceConfig.model_fields)
    missing = [k for k in keys if not any(re.search(rf"(?<![\w.]){k}\b", span) for span in code_spans)]
    assert not missing, f"keys the parser takes that docs/pipelines.md does not name: {missing}"
