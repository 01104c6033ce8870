"""How many attempts each project may have in flight in this process.

Each destination is held to its share of the slots (slots.py), but one project may have many
destinations: four that hang from their first request held every slot of the process, at a
quarter each, until their first attempts timed out (10 s by default, up to a minute), and a
project that kept adding endpoints that hang kept every other project's deliveries waiting. So
a project's attempts in flight, and the deliveries handed over to start, are held to
``delivery_concurrency_per_project`` (three quarters of the slots by default): another
project always finds a quarter free. A lease cut short by it leaves the rest due in the table,
and the lease loop looks again once the project has an eighth of its limit free.
"""

from __future__ import annotations


def add_count(counts: dict[str, int], key: str, n: int) -> int:
    """``counts[key] += n``, dropping the key at zero: the maps stay as small as what is busy."""
    value = counts.get(key, 0) + n
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)
    return value


class ProjectShares:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._used: dict[str, int] = {}  # attempts in flight and handed over, by project
        self._of: dict[str, str] = {}  # each destination seen: its project
        self._destinations: dict[str, set[str]] = {}  # and the other way round

    def note(self, did: str, project_id: str) -> None:
        if self._of.get(did) != project_id:
            self._of[did] = project_id
            self._destinations.setdefault(project_id, set()).add(did)

    def left(self, did: str) -> int | None:
        """How many more attempts the project of ``did`` may start (None: not known yet)."""
        project = self._of.get(did)
        return None if project is None else self.limit - self._used.get(project, 0)

    def add(self, did: str, n: int) -> bool:
        """Count ``n`` more (or fewer) attempts for the project of ``did``. True when that frees
        enough of a full project's share to lease for it again (an eighth, at least one)."""
        project = self._of.get(did)
        if project is None:
            return False
        used = add_count(self._used, project, n)
        if used <= 0:
            # Nothing of the project in flight or handed over: its destinations are forgotten
            # (noted again as their deliveries come), or a process kept every destination it had
            # ever delivered to, deleted ones too, for its whole life.
            for forgotten in self._destinations.pop(project, ()):
                self._of.pop(forgotten, None)
        return n < 0 and self.limit - used == max(1, self.limit // 8)

    def cut(self, known: dict[str, int], default: int) -> None:
        """Cut each destination's room in ``known`` to what its project has left: listed, those
        of a project without room, so that leases pass them over. Only the projects with less
        left than some destination's room are looked at: a lease is made every few
        milliseconds under load, and a process may know thousands of destinations."""
        most = max(default, *known.values()) if known else default
        for project, used in self._used.items():
            left = self.limit - used
            if left >= most:
                continue
            for did in self._destinations.get(project, ()):
                if left < known.get(did, default):
                    known[did] = left
