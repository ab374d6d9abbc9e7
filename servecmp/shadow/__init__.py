"""`servecmp shadow`: mirror live OpenAI-compatible traffic to a candidate and measure divergence.

Modules: `proxy` (the ASGI reverse proxy, `shadow serve`), `collect` (the mirror receiver behind an
Envoy/Istio mirror, `shadow collect`), `workers` (where comparisons run; `compare_and_store`, the one
path from a mirrored exchange to records and metrics), `mirror` (one comparison), `measures` (pure
divergence measures), `teacher_forcing` (vLLM prompt_logprobs scoring), `payloads` (reading bodies
and SSE), `metrics` (Prometheus ``/metrics``), `store` (the store interface, schema and writer) with
its backends `sqlite_store` and `pg_store`, `report` (the typed `ShadowSummary`, also behind
`servecmp report DB`), `replay`, `upstream` (aiohttp clients built from
`servecmp.endpoints.EndpointSpec`), `wiring` (`[shadow]` settings + endpoints → pieces). The command
line is `servecmp._cli.shadow`; the fake server the tests and the benchmark use is
`tests/stub_shadow.py`.
"""
