"""Prefix-aware ordering: items that share a prompt prefix go to a server close together, the first
of each group alone, so the server's prefix cache (vLLM's automatic prefix caching) computes the
shared part once and serves it to the rest.

MMLU's 5-shot prompts share their subject's header and five exemplars (most of each prompt); a JSONL
task with a few-shot file shares the exemplars across every item. Sent in file order at a high
concurrency, the first dozens of a group arrive together, before any of them has filled the cache,
and each computes the prefix itself. Here a group's first item (its "leader") is sent alone; its
other items are released when it finishes and are sent before any new group is started.

Groups are keyed by the first `PREFIX_CHARS` characters of the prompt (the shared context of a
continuation task). The order depends only on the items, never on timing, so a resumed run orders
its pending items as the original would have.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence

from servecmp.mcq.records import McqItem

#: Prompts that agree on this many leading characters share a group. MMLU's subject header and first
#: exemplar are longer, so subjects never merge; items of a zero-shot task with unrelated questions
#: mostly fall into groups of one (and then the ordering changes nothing).
PREFIX_CHARS = 256


def prefix_key(item: McqItem) -> str:
    return item.prompt[:PREFIX_CHARS]


def prefix_groups(items: Iterable[McqItem]) -> list[list[McqItem]]:
    """Items grouped by prompt prefix: groups in order of first appearance, items in their order."""
    groups: dict[str, list[McqItem]] = {}
    for it in items:
        groups.setdefault(prefix_key(it), []).append(it)
    return list(groups.values())


def prefix_order(items: Iterable[McqItem]) -> list[McqItem]:
    """The items with each prefix group together (the sequence `PrefixScheduler` follows when one
    request is in flight at a time)."""
    return [it for group in prefix_groups(items) for it in group]


class PrefixScheduler:
    """Hands out items for one endpoint: the released followers of started groups first (oldest
    group first), else the next group's leader; a group's followers are released when its leader
    finishes (`done`), whether it succeeded or not. `next` waits when every remaining item is a
    follower of a leader still in flight, and returns None when nothing is left."""

    def __init__(self, items: Sequence[McqItem], *, grouped: bool = True) -> None:
        groups = prefix_groups(items) if grouped else [[it] for it in items]
        self._groups: deque[list[McqItem]] = deque(g for g in groups if g)
        self._ready: deque[McqItem] = deque()
        #: Followers of each leader in flight, by the leader's item id.
        self._held: dict[str, list[McqItem]] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._ready) + sum(map(len, self._groups)) + sum(map(len, self._held.values()))

    def take(self) -> McqItem | None:
        """The next item to send now, or None when none can be sent yet (or none is left)."""
        if self._ready:
            return self._ready.popleft()
        if self._groups:
            leader, *rest = self._groups.popleft()
            if rest:
                self._held[leader.item_id] = rest
            return leader
        return None

    async def next(self) -> McqItem | None:
        while True:
            item = self.take()
            if item is not None or not self._held:
                return item
            self._changed.clear()
            await self._changed.wait()

    def done(self, item: McqItem) -> None:
        """`item` finished (answered or failed): release its group's followers."""
        rest = self._held.pop(item.item_id, None)
        if rest is not None:
            self._ready.extend(rest)
        self._changed.set()
