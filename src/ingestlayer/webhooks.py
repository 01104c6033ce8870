"""``ingestlayer.webhooks.verify``: check a delivery's signature in your receiver.

The same function as :func:`ingestlayer.sdk.webhooks.verify`, at the path the documentation uses::

    from ingestlayer.webhooks import verify

    event = verify(secret, request.headers, raw_body)  # raises WebhookVerificationError
"""

from __future__ import annotations

from ingestlayer.sdk.webhooks import WebhookVerificationError, verify

__all__ = ["WebhookVerificationError", "verify"]
