"""MCQ run files: where records and refused items go. The types live in lower layers (`McqItem` in
`servecmp.tasks.items`, `McqRecord` in `servecmp.records`) and are re-exported here for the MCQ feature.

Data flows one way: a task loader yields `McqItem`s, the scorer turns each (item, endpoint) into
one `McqRecord` (appended to the run's JSONL as soon as it exists), and the metrics read arrays
built from those records. Nothing here does I/O.

A run directory holds manifest.json (`servecmp.mcq.settings.McqManifest`), `ITEMS`, `RECORDS`,
`ITEM_ERRORS` and summary.json (`servecmp.mcq.summary.McqSummary`).
"""

from __future__ import annotations

from servecmp.records import McqRecord
from servecmp.tasks.items import McqItem, ScoringKind

#: One `McqRecord` per line, appended as results arrive.
RECORDS = "records.jsonl"
#: Items an endpoint refused (HTTP 400/413/422, e.g. a prompt over its context length). Kept apart
#: from records so the metrics never see them; a resume tries them again (say, after a server
#: restart with a longer --max-model-len).
ITEM_ERRORS = "item_errors.jsonl"
#: Every item of the run as the task gave it (`McqItem`: id, question, options, gold, rendered
#: prompt), written once when the run starts: reports read their texts here and never reload the
#: task, so a run directory renders on a machine without the task's data.
ITEMS = "items.jsonl"


__all__ = ["ITEMS", "ITEM_ERRORS", "RECORDS", "McqItem", "McqRecord", "ScoringKind"]
