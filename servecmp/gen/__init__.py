"""`servecmp gen`: generated answers compared item by item (GSM8K and the user's verifiable tasks).

run.py       the run: items.jsonl at start, then generations (records.jsonl), then teacher forcing
             (teacher_forcing.jsonl); resumable at every step
records.py   the record contract (`GenRecord`, `TfRecord`)
settings.py  the typed, versioned manifest and how flags / servecmp.toml / a resumed run become it
summary.py   records → the typed, versioned `GenSummary` (summary.json); `load_result(run_dir)`
render.py    the terminal report; estimates for the gates live in servecmp.verdicts
"""
