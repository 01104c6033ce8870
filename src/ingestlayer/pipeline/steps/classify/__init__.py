"""``classify`` (ENR): one label from a fixed set per event, from your model or keyword rules.

The user brings the model (any OpenAI-compatible chat-completions endpoint), the prompt and the
label schema; the step writes one of the labels to ``field``, so later steps and ``when``
conditions branch on it (``filter.match: urgency = critical``). Answers are cached by what the
model is asked, so identical tickets reuse one call; a timeout, an error or an answer outside
the labels writes the ``fallback`` label (or fails the step when there is none).

See :class:`~ingestlayer.pipeline.steps.classify.config.ClassifyConfig` for the configuration and
an example, and ``docs/steps/classify.md`` for the user guide.

Modules: ``config`` (the validated configuration), ``parsing`` (reading a label out of an answer;
the keyword model), ``providers`` (the chat-completions request), ``step`` (caching, sharing,
fallback).
"""

from __future__ import annotations

from ingestlayer.pipeline.steps.classify.config import ClassifyConfig, KeywordRule
from ingestlayer.pipeline.steps.classify.parsing import AnswerParser, KeywordModel, parse_answer
from ingestlayer.pipeline.steps.classify.step import Classify, ClassifyError

__all__ = [
    "AnswerParser",
    "Classify",
    "ClassifyConfig",
    "ClassifyError",
    "KeywordModel",
    "KeywordRule",
    "parse_answer",
]
