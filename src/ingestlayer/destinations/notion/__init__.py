"""``notion``: ``pages.create`` in a Notion database, one page per delivery.

The configuration, with its example, is :class:`~.config.NotionConfig`; property values are built
in :mod:`.properties`; the request and how Notion's answers map to outcomes are in
:mod:`.destination`.
"""

from __future__ import annotations

from ingestlayer.destinations.notion.config import NotionConfig
from ingestlayer.destinations.notion.destination import Notion

__all__ = ["Notion", "NotionConfig"]
