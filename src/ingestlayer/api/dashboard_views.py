"""What the dashboard's templates are given: formatting, recipe cards, YAML, chart geometry.

Nothing here queries the database; :mod:`ingestlayer.api.dashboard` loads rows and hands them in.
Secret values never reach a template: configuration is shown with references (``ref:NAME``,
``env:VAR``) as stored; any other value under a credential-looking key, every header value, and
the password and query values of every URL are masked (:func:`mask`, and
:func:`ingestlayer.urlmask.mask_url` for a URL, as everywhere else).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ingestlayer.destinations.registry import build_destination, destination_class
from ingestlayer.pipeline.steps.registry import step_class
from ingestlayer.records import DestinationRow, PipelineRow, ProjectConfig
from ingestlayer.store.stats import Series, SeriesPoint
from ingestlayer.timefmt import MAX_TIMESTAMP, MIN_TIMESTAMP, iso
from ingestlayer.urlmask import (
    MASK,
    SENSITIVE_NAME,
    STARTS_WITH_SCHEME,
    is_reference,
    is_url_key,
    mask_headers,
)
from ingestlayer.urlmask import mask_url as mask_url  # noqa: PLC0414 - re-exported for the routes
from ingestlayer.yaml_config import YAML_DUMPER

WEB = Path(__file__).resolve().parent.parent / "web"
STATUSES = ("pending", "delivering", "retrying", "delivered", "dead")


# ---- formatting ------------------------------------------------------------------------------


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "—"
    ts = min(max(ts, MIN_TIMESTAMP), MAX_TIMESTAMP)  # as iso(): the years 0001-9999
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return ""
    delta = (now if now is not None else time.time()) - ts
    future = delta < 0
    d = abs(delta)
    if d < 1:
        text = "now"
        return text
    if d < 60:
        text = f"{int(d)} s"
    elif d < 3600:
        text = f"{int(d // 60)} min"
    elif d < 86400:
        text = f"{int(d // 3600)} h"
    else:
        text = f"{int(d // 86400)} d"
    return f"in {text}" if future else f"{text} ago"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 10_000:
        return f"{v / 1000:.1f} s"
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    if v >= 100:
        return f"{v:.0f} ms"
    return f"{v:.1f} ms"


def fmt_num(n: int | float | None) -> str:
    if n is None:
        return "—"
    return f"{n:,}".replace(",", "\u202f")


def fmt_pct(x: float | None) -> str:
    if x is None:
        return "—"
    v = x * 100
    if v in {0, 100}:
        return f"{v:.0f} %"
    return f"{math.floor(v * 10) / 10:.1f} %"


def pretty_json(raw: str | bytes | Any) -> str:
    try:
        value = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except (orjson.JSONDecodeError, TypeError):
        return raw if isinstance(raw, str) else str(raw)


def error_detail(code: int | None, error: str | None) -> str | None:
    """The error text worth showing beside a status code (not a bare "HTTP 503")."""
    if not error or (code is not None and error.strip() == f"HTTP {code}"):
        return None
    return error


def status_of_attempt(code: int | None, error: str | None) -> str:
    if code is not None:
        return str(code)
    return error or "error"


def attempt_ok(error: str | None) -> bool:
    """An attempt succeeded when it has no error, whatever its code: email succeeds with SMTP
    250, the PostgreSQL destination with no code at all, and Slack refuses a message with 200."""
    return error is None


_env: Environment | None = None


def env() -> Environment:
    global _env  # noqa: PLW0603 - one compiled template set per process
    if _env is None:
        e = Environment(
            loader=FileSystemLoader(str(WEB / "templates")),
            autoescape=select_autoescape(["html", "svg"], default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        e.filters.update(
            when=fmt_time,
            ago=fmt_ago,
            iso=iso,
            ms=fmt_ms,
            num=fmt_num,
            pct=fmt_pct,
            masked_url=_masked_url,
            masked_text=mask_urls_in,
        )
        e.globals.update(
            STATUSES=STATUSES,
            attempt_status=status_of_attempt,
            attempt_ok=attempt_ok,
            error_detail=error_detail,
        )
        _env = e
    return _env


def render(template: str, **context: Any) -> str:
    return env().get_template(template).render(**context)


# ---- masking ---------------------------------------------------------------------------------


# An absolute URL inside free text (a target such as "discord webhook (https://…)", a summary).
# It runs to the next whitespace: a URL may hold ' " ` < > (a path such as /it's/, or a query value
# that holds one), and ending it at such a character would leave the query after it unmasked.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
# What may close the text around a URL ("see 'https://host/x?token=T'.", "(https://host/x)"): given
# back to the text when it ends the match. Nothing else is, so no part of a query value is shown.
_CLOSING = frozenset("'\"`>.,;:!?")
_BRACKETS = {")": "(", "]": "[", "}": "{"}
# Hidden values shorter than this are left in free text: "1" or "on" names nothing, and
# replacing them would garble the text around them.
_MIN_HIDDEN = 4


def _url_and_tail(found: str) -> tuple[str, str]:
    """A URL found in free text, and what ends the match but belongs to the text: closing quotes,
    punctuation, and a closing bracket the URL did not open."""
    end = len(found)
    while end > 0:
        c = found[end - 1]
        if c in _CLOSING or (c in _BRACKETS and found.count(c, 0, end) > found.count(_BRACKETS[c], 0, end)):
            end -= 1
            continue
        break
    return found[:end], found[end:]


def mask_urls_in(text: str) -> str:
    """Free text with every absolute URL in it masked as :func:`mask_url` does."""

    def one(m: re.Match[str]) -> str:
        url, tail = _url_and_tail(m.group(0))
        return mask_url(url) + tail

    return _URL_IN_TEXT.sub(one, text)


def mask_url_value(value: str) -> str:
    """A setting that is a URL, masked whole (:func:`mask_url`): not searched for URLs as free text
    is, so a character that may end a URL in a sentence (a quote, ``<``) leaves none of it shown."""
    return mask_url(value) if STARTS_WITH_SCHEME.match(value) else mask_urls_in(value)


def _is_headers(key: str) -> bool:
    return key.lower().replace("-", "_") in {"headers", "secret_headers"}


def mask(value: Any, key: str = "") -> Any:
    """A copy fit to show: credential-looking keys, header values and URLs' credentials masked.

    References (``ref:NAME``, ``env:VAR``) are kept: they name a secret without holding it.
    """
    if isinstance(value, dict):
        if key and _is_headers(key):
            # The names only, as the API shows them (secret_headers hold references, kept).
            return mask_headers(value)
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if (
        key
        and SENSITIVE_NAME.search(key)
        and value not in (None, "", True, False)
        and not is_reference(value)
    ):
        return MASK
    if isinstance(value, str):
        return mask_url_value(value) if key and is_url_key(key) else mask_urls_in(value)
    return value


def hidden_values(value: Any, key: str = "") -> dict[str, str]:
    """Each string in ``value`` that :func:`mask` changes, and what it shows instead: to take the
    same values out of free text built from that configuration (a summary, a target)."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        shown = mask(value, key)
        for k, v in value.items():
            if isinstance(v, str):
                if v and shown[k] != v:
                    out[v] = shown[k]
            else:
                out.update(hidden_values(v, str(k)))
    elif isinstance(value, list):
        for v in value:
            out.update(hidden_values({key: v}))
    elif isinstance(value, str) and value and mask(value, key) != value:
        out[value] = mask(value, key)
    return out


def scrub_text(text: str, config: Any) -> str:
    """Free text made from ``config`` (a step's summary, a destination's target) with what
    :func:`mask` hides in ``config`` hidden in the text too, and any URL in it masked."""
    hidden = hidden_values(config)
    for secret in sorted(hidden, key=len, reverse=True):  # the longest first: one may hold another
        if len(secret) >= _MIN_HIDDEN:
            text = text.replace(secret, hidden[secret])
    return mask_urls_in(text)


# ---- recipe cards ----------------------------------------------------------------------------


@dataclass
class StepView:
    n: int
    name: str
    kind: str
    summary: str
    destinations: list[str] = field(default_factory=list)


@dataclass
class DestinationView:
    id: str
    kind: str
    name: str
    target: str
    when: str | None
    enabled: bool
    retry: str | None
    connect: str | None = None  # the Slack connection's secret name, for "Connect Slack"
    connected: bool = False


@dataclass
class PipelineCard:
    id: str
    name: str  # for an endpoint: its URL
    description: str | None
    enabled: bool
    endpoint: bool
    match: list[str]
    steps: list[StepView]
    destinations: list[DestinationView]
    yaml: str


def _step_kind(name: str) -> str:
    try:
        return str(step_class(name).kind)
    except Exception:
        return "?"


def _compact_step(name: str, config: dict[str, Any]) -> Any:
    """The step's config without defaults, by its YAML names; a shorthand string where one exists."""
    try:
        cls = step_class(name)
        model = cls.config_model.model_validate(config)
        out = mask(model.model_dump(mode="json", exclude_defaults=True, by_alias=True))
        short = getattr(cls, "shorthand_field", None)
        if short and set(out) == {short}:
            return out[short]
    except Exception:
        out = mask(dict(config))
    # Every option at its default: an empty mapping, as a user writes it ({}), not null.
    return out


def _step_summary(name: str, config: dict[str, Any]) -> str:
    try:
        cls = step_class(name)
        summary = str(cls(cls.config_model.model_validate(config)).summary())
    except Exception:
        return orjson.dumps(mask(config)).decode()[:120]
    # A summary is written by the step and may quote its settings (a URL, a header).
    return scrub_text(summary, config)


def _compact_settings(kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    try:
        model = destination_class(kind).config_model.model_validate(settings)
        out: dict[str, Any] = model.model_dump(mode="json", exclude_defaults=True, by_alias=True)
    except Exception:
        out = {k: v for k, v in settings.items() if v not in (None, {}, [])}
    masked: dict[str, Any] = mask(out)
    return masked


def _target(d: DestinationRow) -> str:
    settings = d.config.get("settings", {})
    try:
        target = str(build_destination(d.kind, settings).target())
    except Exception:
        target = str(settings.get("url") or settings.get("channel") or d.kind)
    url = settings.get("url")
    if isinstance(url, str) and target == url:
        return mask_url_value(target)  # the URL itself: masked whole, as in the YAML
    # A target built from a credential (an inline webhook URL, a DSN, a URL's password) must not
    # be shown.
    return scrub_text(target, settings)


def _retry_text(retry: dict[str, Any] | None) -> str | None:
    if not retry:
        return None
    if "schedule" in retry:
        return "schedule " + ", ".join(f"{s:g}s" for s in retry["schedule"])
    return ", ".join(f"{k} {v}" for k, v in retry.items())


def destination_view(d: DestinationRow, when: str | None, secret_names: set[str]) -> DestinationView:
    settings = d.config.get("settings", {})
    connect = None
    conn = settings.get("connection") if d.kind == "slack" else None
    if isinstance(conn, str) and conn.startswith("ref:"):
        connect = conn[4:]
    return DestinationView(
        id=d.id,
        kind=d.kind,
        name=d.name,
        target=_target(d),
        when=when,
        enabled=d.enabled,
        retry=_retry_text(d.config.get("retry")),
        connect=connect,
        connected=connect in secret_names if connect else False,
    )


def pipeline_yaml(p: PipelineRow, cfg: ProjectConfig) -> str:
    doc: dict[str, Any] = {"name": p.name}
    if p.config.get("description"):
        doc["description"] = mask_urls_in(p.config["description"])
    if not p.enabled:
        doc["enabled"] = False
    doc["source"] = {"match": list(p.config["source"]["match"])}
    steps = [{s["name"]: _compact_step(s["name"], s["config"])} for s in p.config.get("steps", [])]
    if steps:
        doc["steps"] = steps
    dests: list[dict[str, Any]] = []
    for route in p.config.get("destinations", []):
        d = cfg.destinations.get(route["destination_id"])
        if d is None:
            dests.append({"ref": route.get("destination") or route["destination_id"]})
            continue
        entry: dict[str, Any] = {d.kind: _compact_settings(d.kind, d.config.get("settings", {}))}
        if not d.name.startswith(f"{p.name}/") and not d.name.startswith("endpoint:"):
            entry["name"] = d.name
        if route.get("when"):
            entry["when"] = route["when"]
        if d.config.get("retry"):
            entry["retry"] = d.config["retry"]
        if d.config.get("concurrency"):
            entry["concurrency"] = d.config["concurrency"]
        dests.append(entry)
    doc["destinations"] = dests
    text: str = yaml.dump(
        {"pipelines": [doc]}, Dumper=YAML_DUMPER, sort_keys=False, allow_unicode=True, width=100
    )
    return text


def pipeline_card(p: PipelineRow, cfg: ProjectConfig, secret_names: set[str]) -> PipelineCard:
    steps = [
        StepView(
            n=i + 1,
            name=s["name"],
            kind=_step_kind(s["name"]),
            summary=_step_summary(s["name"], s["config"]),
            destinations=list(s["config"].get("destinations") or []),
        )
        for i, s in enumerate(p.config.get("steps", []))
    ]
    dests: list[DestinationView] = []
    for route in p.config.get("destinations", []):
        d = cfg.destinations.get(route["destination_id"])
        if d is not None:
            dests.append(destination_view(d, route.get("when"), secret_names))
    name = p.name
    if p.endpoint and dests:
        name = dests[0].target
    return PipelineCard(
        id=p.id,
        name=name,
        description=mask_urls_in(p.config["description"]) if p.config.get("description") else None,
        enabled=p.enabled,
        endpoint=p.endpoint,
        match=list(p.config["source"]["match"]),
        steps=steps,
        destinations=dests,
        yaml=pipeline_yaml(p, cfg),
    )


# ---- event traces ----------------------------------------------------------------------------


@dataclass
class TraceStep:
    n: int
    name: str
    kind: str
    outcome: str
    destination: str | None
    added: list[str]
    changed: list[str]
    removed: list[str]
    notes: list[str]
    error: str | None
    reason: str | None


@dataclass
class TracePipeline:
    name: str
    pipeline_id: str | None
    outcome: str
    destinations: list[str]
    blocked: dict[str, str]
    steps: list[TraceStep]
    passed_over: dict[str, str] = field(default_factory=dict)  # destination -> why (its when)


def trace_view(trace: list[dict[str, Any]] | None) -> list[TracePipeline]:
    out: list[TracePipeline] = []
    for entry in trace or []:
        steps = []
        for i, s in enumerate(entry.get("steps", [])):
            notes = [str(n) for n in s.get("notes", [])]
            if s.get("note"):
                notes.append(str(s["note"]))
            steps.append(
                TraceStep(
                    n=i + 1,
                    name=str(s.get("step", "?")),
                    kind=_step_kind(str(s.get("step", ""))),
                    outcome=str(s.get("outcome", "?")),
                    destination=s.get("destination"),
                    added=[str(k) for k in s.get("added", [])],
                    changed=[str(k) for k in s.get("changed", [])],
                    removed=[str(k) for k in s.get("removed", [])],
                    notes=notes,
                    error=s.get("error"),
                    reason=s.get("reason"),
                )
            )
        out.append(
            TracePipeline(
                name=str(entry.get("pipeline", "?")),
                pipeline_id=entry.get("pipeline_id"),
                outcome=str(entry.get("outcome", "?")),
                destinations=[str(d) for d in entry.get("destinations", [])],
                blocked={str(k): str(v) for k, v in (entry.get("blocked") or {}).items()},
                steps=steps,
                passed_over={str(k): str(v) for k, v in (entry.get("passed_over") or {}).items()},
            )
        )
    return out


# ---- charts (inline SVG, drawn here, no library) ----------------------------------------------

CHART_W, CHART_H = 720, 200
PLOT_L, PLOT_R, PLOT_T, PLOT_B = 52, 712, 14, 172


@dataclass
class Bar:
    x: float
    y: float
    w: float
    h: float
    label: str


@dataclass
class Line:
    segments: list[str]  # "x,y x,y …" per run of two or more buckets with data
    # (x, y, label, alone) per bucket with data; ``alone``: no neighbour has data, so no line
    # passes through it and its dot is all there is to see (drawn always, not only on hover).
    dots: list[tuple[float, float, str, bool]]
    css: str
    name: str


@dataclass
class Chart:
    id: str
    title: str
    caption: str
    bars: list[Bar] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    yticks: list[tuple[float, str]] = field(default_factory=list)
    xticks: list[tuple[float, str]] = field(default_factory=list)
    empty: bool = False
    width: int = CHART_W
    height: int = CHART_H
    plot: tuple[int, int, int, int] = (PLOT_L, PLOT_R, PLOT_T, PLOT_B)


def nice_ceiling(v: float) -> float:
    if v <= 0:
        return 1.0
    exp: float = 10.0 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp  # pragma: no cover


WIDE_W, WIDE_R = 1100, 1092  # the throughput chart spans the page


def _x(i: int, n: int, right: int = PLOT_R) -> float:
    return float(PLOT_L + (right - PLOT_L) * i / n)


def _y(v: float, lo: float, hi: float) -> float:
    frac = 0.0 if hi == lo else (v - lo) / (hi - lo)
    return float(PLOT_B - (PLOT_B - PLOT_T) * min(max(frac, 0.0), 1.0))


_TICK_EVERY = {60: 600, 900: 3 * 3600, 3600: 86400}


def _xticks(series: Series, right: int = PLOT_R) -> list[tuple[float, str]]:
    every = _TICK_EVERY.get(series.width, series.width * 10)
    if right > PLOT_R and series.width == 900:
        every //= 3  # hourly labels fit on the wide chart
    fmt = "%a %d" if series.width >= 3600 else "%H:%M"
    n = len(series.points)
    return [
        (_x(i, n, right), datetime.fromtimestamp(p.start, UTC).strftime(fmt))
        for i, p in enumerate(series.points)
        # A label needs room on both sides of its tick: none at the very edges.
        if int(p.start) % every == 0 and PLOT_L + 18 <= _x(i, n, right) <= right - 18
    ]


def _span(p: SeriesPoint, width: int) -> str:
    fmt = "%a %d %H:%M" if width >= 3600 else "%H:%M"
    a = datetime.fromtimestamp(p.start, UTC).strftime(fmt)
    b = datetime.fromtimestamp(p.end, UTC).strftime("%H:%M")
    return f"{a} to {b} UTC"


def per_bucket(width: int) -> str:
    return {60: "per minute", 900: "per 15 min", 3600: "per hour"}.get(width, f"per {width}s")


def _sampled(series: Series) -> str:
    if series.sample_every <= 1:
        return ""
    return f" (estimated from 1 in {series.sample_every} attempts)"


def throughput_chart(series: Series) -> Chart:
    n = len(series.points)
    top = nice_ceiling(max((p.events for p in series.points), default=0))
    slot = (WIDE_R - PLOT_L) / n
    gap = min(2.0, slot * 0.2)
    bars = [
        Bar(
            x=round(_x(i, n, WIDE_R) + gap / 2, 2),
            y=round(_y(p.events, 0, top), 2),
            w=round(slot - gap, 2),
            h=round(PLOT_B - _y(p.events, 0, top), 2),
            label=f"{_span(p, series.width)}: {fmt_num(p.events)} events",
        )
        for i, p in enumerate(series.points)
        if p.events
    ]
    return Chart(
        id="throughput",
        title="Throughput",
        caption=f"Events received {per_bucket(series.width)}",
        bars=bars,
        yticks=[(_y(v, 0, top), fmt_num(int(v)) if v == int(v) else f"{v:g}") for v in (0, top / 2, top)],
        xticks=_xticks(series, WIDE_R),
        empty=series.events == 0,
        width=WIDE_W,
        plot=(PLOT_L, WIDE_R, PLOT_T, PLOT_B),
    )


def _line(
    values: list[float | None], series: Series, lo: float, hi: float, css: str, name: str, unit: Any
) -> Line:
    n = len(values)
    segments: list[str] = []
    dots: list[tuple[float, float, str, bool]] = []
    run: list[str] = []

    def close() -> None:
        # A run of one point is no line (a polyline of one point draws nothing): its dot shows it.
        if len(run) > 1:
            segments.append(" ".join(run))
        run.clear()

    for i, v in enumerate(values):
        if v is None:
            close()
            continue
        x, y = round(_x(i, n) + (PLOT_R - PLOT_L) / n / 2, 2), round(_y(v, lo, hi), 2)
        run.append(f"{x},{y}")
        alone = (i == 0 or values[i - 1] is None) and (i == n - 1 or values[i + 1] is None)
        dots.append((x, y, f"{_span(series.points[i], series.width)}: {name} {unit(v)}", alone))
    close()
    return Line(segments=segments, dots=dots, css=css, name=name)


def success_chart(series: Series) -> Chart:
    rates = [p.success_rate for p in series.points]
    known = [r for r in rates if r is not None]
    low = min(known, default=1.0)
    lo = 0.0 if low < 0.5 else (0.5 if low < 0.8 else 0.8)
    return Chart(
        id="success",
        title="Success rate",
        # Every attempt counts, retries included: a delivery that failed twice then arrived is
        # one success in three. "Succeeded" is the destination's verdict, not a 2xx code.
        caption=f"Attempts that succeeded, retries included, {per_bucket(series.width)}{_sampled(series)}",
        lines=[_line(rates, series, lo, 1.0, "line-ok", "success", fmt_pct)],
        yticks=[(_y(v, lo, 1.0), f"{v * 100:.0f} %") for v in (lo, (lo + 1) / 2, 1.0)],
        xticks=_xticks(series),
        empty=not known,
    )


def latency_chart(series: Series) -> Chart:
    """p50 and p95 on a log scale: a few timeouts must not flatten the typical latency."""
    p50 = [p.p50 for p in series.points]
    p95 = [p.p95 for p in series.points]
    known = [v for v in (*p50, *p95) if v is not None and v > 0]
    lo_exp = math.floor(math.log10(min(known))) if known else 0
    hi_exp = max(lo_exp + 1, math.ceil(math.log10(max(known)))) if known else 1

    def log(values: list[float | None]) -> list[float | None]:
        return [math.log10(max(v, 10.0**lo_exp)) if v is not None else None for v in values]

    def unit(v: float) -> str:
        return fmt_ms(10**v)

    return Chart(
        id="latency",
        title="Delivery latency",
        caption=f"Attempt duration p50 and p95 (log scale), {per_bucket(series.width)}{_sampled(series)}",
        lines=[
            _line(log(p95), series, lo_exp, hi_exp, "line-p95", "p95", unit),
            _line(log(p50), series, lo_exp, hi_exp, "line-p50", "p50", unit),
        ],
        yticks=[(_y(e, lo_exp, hi_exp), _decade(e)) for e in range(lo_exp, hi_exp + 1)],
        xticks=_xticks(series),
        empty=all(v is None for v in p50),
    )


def _decade(exp: int) -> str:
    ms = 10.0**exp
    if ms >= 1000:
        return f"{ms / 1000:g} s"
    return f"{ms:g} ms"


def _masked_url(url: str | None) -> str:
    """An endpoint's URL as pages show it; none for one whose stored configuration cannot be
    read (see rows.stored_config), whose page must still show, to delete it."""
    return mask_url(url) if isinstance(url, str) else ""
