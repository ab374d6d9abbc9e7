"""`servecmp shadow`: mirror live OpenAI-compatible traffic to a candidate and measure divergence.

Modules: `proxy` (the ASGI reverse proxy), `workers` (where comparisons run), `mirror` (one
comparison), `measures` (pure divergence measures), `teacher_forcing` (vLLM prompt_logprobs
scoring), `payloads` (reading bodies and SSE), `store` (SQLite), `report` (the typed
`ShadowSummary`, also behind `servecmp report DB`), `replay`, `upstream` (aiohttp clients built from
`servecmp.endpoints.EndpointSpec`), `wiring` (`[shadow]` settings + endpoints → pieces). The command
line is `servecmp._cli.shadow`; the fake server the tests and the benchmark use is
`tests/stub_shadow.py`.
"""
