"""`servecmp mcq`: compare two endpoints on multiple-choice tasks over logprobs.

run (`run`: items × endpoints → records, resumable) → per-item records (`records`) → summary
(`summary`: typed, versioned, recomputed from the records) → render (`render`: terminal tables).
`scoring` turns one (item, endpoint) into one record; task loaders live in `servecmp.tasks`.
"""
