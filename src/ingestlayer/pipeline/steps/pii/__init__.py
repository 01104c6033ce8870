"""PII detection and rendering for the ``redact.pii`` step.

``detectors`` finds values in text (email, IP, phone, card, IBAN, secret) and ``render`` turns one
found value into its mask, keyed hash or replacement. Both are pure and synchronous; the step
module (``ingestlayer.pipeline.steps.redact_pii``) walks payloads and talks to the pipeline.
"""

from ingestlayer.pipeline.steps.pii.detectors import ALL_TYPES, Found, PiiType, Scanner
from ingestlayer.pipeline.steps.pii.render import Renderer

__all__ = ["ALL_TYPES", "Found", "PiiType", "Renderer", "Scanner"]
