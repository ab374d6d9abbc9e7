"""`servecmp mcq`: compare two endpoints on multiple-choice tasks over logprobs.

settings (`settings`: flags / servecmp.toml / a run's manifest → typed `McqSettings`, the versioned
`McqManifest`, the resume policy) → run (`run`: items × endpoints → records, resumable) → per-item
records (`records`) → summary (`summary`: the typed, versioned `McqSummary`, recomputed from the
records) → render (`render`: terminal tables). `scoring` turns one (item, endpoint) into one
record; task loaders live in `servecmp.tasks`.
"""
