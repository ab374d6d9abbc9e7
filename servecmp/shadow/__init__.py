"""`servecmp shadow`: mirror live OpenAI-compatible traffic to a candidate and measure divergence.

Modules: `proxy` (the ASGI reverse proxy), `workers` (where comparisons run), `mirror` (one
comparison), `measures` (pure divergence measures), `teacher_forcing` (vLLM prompt_logprobs
scoring), `payloads` (reading bodies and SSE), `store` (SQLite), `report`, `replay`, `upstream`
(endpoints and HTTP clients), `wiring` (config → pieces), `stub` (a fake server for tests and the
benchmark), `cli`.
"""
