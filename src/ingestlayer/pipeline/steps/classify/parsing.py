"""Reading a label out of a model's answer, and the built-in keyword model.

Models answer in many shapes even when told to give one word: ``high``, ``"High".``,
``{"label": "high"}``, a fenced JSON block, ``Urgency: **high** because …``, a ``<think>`` block
first. :func:`parse_answer` accepts all of them and returns one of the configured labels, or
``None`` when the answer names none (the step then uses its fallback).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ingestlayer.pipeline.steps.classify.config import KeywordRule
from ingestlayer.pipeline.templates import as_text, lookup

# Keys a JSON answer may carry its label under (after the step's own field name).
ANSWER_KEYS = ("label", "labels", "category", "class", "classification", "answer", "result", "value")
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
# A fenced block anywhere in a longer answer ("Here you go:\n```json\n{...}\n```\nHope it helps").
_FENCE_ANYWHERE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?```", re.DOTALL)
_EDGE_CHARS = " \t\r\n\"'`*_\u201c\u201d\u2018\u2019\u00ab\u00bb<>[]()"
_TRAILING = ".,;:!?"


def _norm(text: str) -> str:
    out = text.strip(_EDGE_CHARS)
    while out and out[-1] in _TRAILING:
        out = out[:-1].strip(_EDGE_CHARS)
    return out.casefold()


def _whole(phrase: str) -> str:
    """A regex for ``phrase`` as a whole word: letters, digits, ``_`` and ``-`` bind to words, so
    ``down`` does not match ``download`` and ``urgent`` does not match ``non-urgent``."""
    body = r"\s+".join(re.escape(w) for w in phrase.split())
    before = r"(?<![\w-])" if re.match(r"[\w-]", phrase) else ""
    after = r"(?![\w-])" if re.search(r"[\w-]$", phrase) else ""
    return before + body + after


class AnswerParser:
    """Built once per step: the labels, by their case-folded form, and a scanner for verbose text."""

    def __init__(self, labels: Sequence[str], field: str) -> None:
        self.labels = list(labels)
        self._by_fold = {label.casefold(): label for label in labels}
        # Longest first, so at one position "very high" wins over "high".
        ordered = sorted(labels, key=len, reverse=True)
        self._scan = re.compile("|".join(f"({_whole(label)})" for label in ordered), re.IGNORECASE)
        self._scan_labels = ordered
        keys = [field, field.rsplit(".", 1)[-1], *ANSWER_KEYS]
        self._keys = list(dict.fromkeys(k.casefold() for k in keys))

    def exact(self, text: str) -> str | None:
        return self._by_fold.get(_norm(text))

    def _from_json(self, value: Any) -> str | None:
        if isinstance(value, str):
            return self.exact(value)
        if isinstance(value, list):
            return self._from_json(value[0]) if len(value) == 1 else None
        if isinstance(value, dict):
            folded = {str(k).casefold(): v for k, v in value.items()}
            for key in self._keys:
                if key in folded:
                    return self._from_json(folded[key])
            if len(value) == 1:
                return self._from_json(next(iter(value.values())))
        return None

    def _keyed(self, data: Any) -> bool:
        """Whether a JSON answer names its label under a label key (``{"label": …}``)."""
        return isinstance(data, dict) and any(str(k).casefold() in self._keys for k in data)

    def _structured(self, text: str) -> tuple[bool, str | None]:
        """A JSON (or fenced) answer inside ``text``: (found, label). Once the model has answered
        ``{"label": "medium", "reason": "not critical"}`` its label is medium, outside the labels:
        scanning the reasoning for a label would pick ``critical``, the very one it ruled out."""
        candidates = [text] if text[0] in '{["' else []
        candidates += [m.group(1).strip() for m in _FENCE_ANYWHERE.finditer(text)]
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
        for candidate in dict.fromkeys(candidates):
            found = self.exact(candidate) if candidate else None
            if found is not None:
                return True, found
            try:
                data = orjson.loads(candidate)
            except orjson.JSONDecodeError:
                continue
            found = self._from_json(data)
            if found is not None or self._keyed(data):
                return True, found
        return False, None

    def first_mentioned(self, text: str) -> str | None:
        m = self._scan.search(text)
        if m is None:
            return None
        assert m.lastindex is not None
        return self._scan_labels[m.lastindex - 1]

    def __call__(self, answer: str | None) -> str | None:
        if answer is None:
            return None
        text = _THINK.sub("", answer).strip()
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1).strip()
        if not text:
            return None
        found = self.exact(text)
        if found is not None:
            return found
        structured, found = self._structured(text)
        if structured:
            return found
        return self.first_mentioned(text)


def parse_answer(answer: str | None, labels: Sequence[str], field: str = "label") -> str | None:
    """One-off form of :class:`AnswerParser` (the step builds its parser once)."""
    return AnswerParser(labels, field)(answer)


# ---- the keyword model -----------------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@dataclass(frozen=True)
class KeywordMatch:
    label: str
    rule: int | None  # 1-based rule number; None when the default applied
    phrase: str | None


# Typographic quotes (what phones and many editors type for ' and ") read as the plain ones, in
# rules and in text alike: `can't log in` matched no "I can\u2019t log in".
_PLAIN_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
# Between two fields' texts: neither whitespace nor a word character, so no phrase spans two
# fields (`data loss` in a subject ending "data" and a body starting "loss"), and a word at a
# field's edge is still a whole word.
_FIELD_JOIN = "\x00"


class KeywordModel:
    """Ordered rules; the first rule with a phrase in its fields wins, else ``default``."""

    def __init__(self, rules: Sequence[KeywordRule], default: str) -> None:
        self.default = default
        self._rules = [
            (
                rule,
                re.compile(
                    "|".join(
                        _whole(p.translate(_PLAIN_QUOTES)) for p in sorted(rule.any, key=len, reverse=True)
                    ),
                    re.IGNORECASE,
                ),
            )
            for rule in rules
        ]

    @staticmethod
    def text_of(fields: Sequence[str] | None, envelope: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
        texts: Iterable[str]
        if fields is None:
            texts = _strings(payload)
        else:
            texts = [as_text(lookup(path, envelope, payload)) for path in fields]
        return _FIELD_JOIN.join(texts).translate(_PLAIN_QUOTES)

    def __call__(self, envelope: Mapping[str, Any], payload: Mapping[str, Any]) -> KeywordMatch:
        texts: dict[tuple[str, ...] | None, str] = {}
        for i, (rule, pattern) in enumerate(self._rules, start=1):
            key = tuple(rule.fields) if rule.fields is not None else None
            if key not in texts:
                texts[key] = self.text_of(rule.fields, envelope, payload)
            m = pattern.search(texts[key])
            if m is not None:
                return KeywordMatch(rule.label, i, m.group(0))
        return KeywordMatch(self.default, None, None)
