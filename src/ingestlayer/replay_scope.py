"""Which deliveries a replay may send again: only to a destination that exists and is enabled.

A delivery to a deleted or disabled destination would be attempted at once and end ``dead``
again with "destination was deleted" / "destination is disabled", using up an attempt, counting
as replayed, and (being dead again) matching the next request of a bulk replay that pages by
sending the same filter again. The API, the dashboard and the CLI refuse such a replay with the
reason, or leave those deliveries out of a bulk one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ingestlayer.records import ProjectConfig

if TYPE_CHECKING:
    from ingestlayer.store.store import Store

# A destination's id as the store makes them (``new_id("dst")``): such a reference names a
# destination even once it is deleted, whose deliveries are still listed under that id.
DESTINATION_ID = re.compile(r"dst_[0-9A-HJKMNP-TV-Z]{26}")


class ReplayRefused(Exception):
    """A replay that could only fail: the message says why, and what to do."""


async def listed_destination(store: Store, cfg: ProjectConfig, reference: str) -> str | None:
    """The destination id a listing filter names: by id, name or endpoint id while it exists,
    and by its ``dst_`` id once deleted, while the project has deliveries to it. None: no such
    destination of this project (another project's id is answered as one that never was)."""
    found = cfg.destination_id(reference)
    if (
        found is None
        and DESTINATION_ID.fullmatch(reference)
        and await store.has_deliveries_to(cfg.project_id, reference)
    ):
        return reference
    return found


def why_not_replayable(cfg: ProjectConfig, destination_id: str, shown: str | None = None) -> str | None:
    """Why deliveries to ``destination_id`` cannot be sent again now, or None if they can."""
    dest = cfg.destinations.get(destination_id)
    if dest is None:
        return f"destination {shown or destination_id} was deleted: its deliveries cannot be sent again"
    if not dest.enabled:
        return f"destination {dest.name} is disabled: enable it, then replay"
    return None


async def replayable_destinations(store: Store, cfg: ProjectConfig, reference: str | None) -> list[str]:
    """The destinations a bulk replay sends to: the one ``reference`` names, or every enabled one.
    Raises :class:`ReplayRefused` when the one named is deleted or disabled, and LookupError when
    it names none."""
    if reference is None:
        return [d.id for d in cfg.destinations.values() if d.enabled]
    found = await listed_destination(store, cfg, reference)
    if found is None:
        raise LookupError(f"no destination {reference!r}")
    problem = why_not_replayable(cfg, found, reference)
    if problem is not None:
        raise ReplayRefused(problem)
    return [found]
