"""`servecmp mcq`: compare a baseline with one or several candidates on multiple-choice tasks over
logprobs, with an optional noise floor (each endpoint against itself).

settings (`settings`: flags / servecmp.toml / a run's manifest → typed `McqSettings`, the versioned
`McqManifest`, the resume policy) → run (`run`: items × endpoints → records, resumable) → per-item
records (`records`) → summary (`summary`: the typed, versioned `McqSummary`, recomputed from the
records; `compare`: every candidate, the leaderboard, the correlations across candidates and the
noise floor as the typed `McqComparison`) → render (`render`: terminal tables). `scoring` turns
one (item, endpoint) into one record; task loaders live in `servecmp.tasks`.
"""
