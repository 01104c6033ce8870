"""``email``: the event as an SMTP message (text + HTML), idempotent Message-ID per delivery.

The configuration, with its example, is :class:`~.config.EmailConfig`; the message is built in
:mod:`.message`; the SMTP exchange and its error classification are in :mod:`.destination`.
"""

from __future__ import annotations

from ingestlayer.destinations.email.config import EmailConfig
from ingestlayer.destinations.email.destination import Email

__all__ = ["Email", "EmailConfig"]
