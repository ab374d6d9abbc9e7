"""Put `servecmp shadow serve` in front of a real vLLM pair and drive it with the openai SDK.

Prints, for chat requests sent directly to the primary and through the proxy (streaming and not):
whether the proxied answer equals the direct one (temperature 0; ids and timestamps differ per
request, so bodies are compared without them), the added latency, and then `servecmp shadow report`.
A check and a figure, not a test: run it against servers you started, e.g.

    servecmp serve --baseline-port 8201 --candidate-port 8202 &
    python scripts/shadow_vllm_check.py --baseline http://127.0.0.1:8201/v1 \\
        --candidate http://127.0.0.1:8202/v1 --candidate-model smollm2-135m-instruct-w8a8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from servecmp.endpoints import normalise_url

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
    "Give a synonym for 'happy'.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Say hello in Spanish.",
]
VOLATILE = {"id", "created", "system_fingerprint"}


def _strip(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in VOLATILE}


def _chat(client: openai.OpenAI, model: str, prompt: str, stream: bool) -> tuple[str, float, dict[str, Any] | None]:
    t0 = time.perf_counter()
    messages = [{"role": "user", "content": prompt}]
    if stream:
        text = "".join(
            (chunk.choices[0].delta.content or "") if chunk.choices else ""  # type: ignore[union-attr]
            for chunk in client.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                        max_tokens=48, temperature=0, stream=True)
        )
        return text, time.perf_counter() - t0, None
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                           max_tokens=48, temperature=0)
    body = json.loads(raw.http_response.content)
    return body["choices"][0]["message"]["content"], time.perf_counter() - t0, _strip(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", "--primary", dest="primary", required=True, help="the primary (baseline) URL")
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--candidate-model", required=True)
    ap.add_argument("--secondary", help="a second baseline replica (noise floor); default: none")
    ap.add_argument("--port", type=int, default=8311)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="shadow-vllm-"))
    db = work / "shadow.db"
    cmd = [sys.executable, "-m", "servecmp", "shadow", "serve", "--baseline", args.primary, "--candidate",
           args.candidate, "--candidate-model", args.candidate_model, "--port", str(args.port), "--db", str(db)]
    if args.secondary:
        cmd += ["--secondary", args.secondary]
    proxy = subprocess.Popen(cmd, stderr=open(work / "proxy.log", "wb"))  # noqa: SIM115 - lives as long as proxy
    proxy_url = f"http://127.0.0.1:{args.port}/v1"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{proxy_url}/models", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        base = normalise_url(args.primary)  # http://host:port, .../v1 or a pasted route: the /v1 base
        model = httpx.get(f"{base}/models").json()["data"][0]["id"]
        direct = openai.OpenAI(base_url=base, api_key="EMPTY")
        proxied = openai.OpenAI(base_url=proxy_url, api_key="EMPTY")
        for stream in (False, True):
            same, added = 0, []
            for prompt in PROMPTS:
                d_text, d_t, d_body = _chat(direct, model, prompt, stream)
                p_text, p_t, p_body = _chat(proxied, model, prompt, stream)
                same += d_text == p_text and d_body == p_body
                added.append((p_t - d_t) * 1000)
            kind = "streaming" if stream else "non-streaming"
            print(f"{kind:>13}: proxied == direct (text{'' if stream else ' and body minus id/created'}) "
                  f"{same}/{len(PROMPTS)}; added latency median {statistics.median(added):+.1f} ms, "
                  f"max {max(added):+.1f} ms (sequential, includes vLLM's own run-to-run variation)")
        time.sleep(8)  # let the mirror finish its comparisons off the response path
        # The proxy's own view (GET /metrics): the counters, which equal the database's.
        metrics = httpx.get(f"http://127.0.0.1:{args.port}/metrics").text
        totals: dict[str, float] = {}
        for line in metrics.splitlines():
            if line.startswith("servecmp_shadow_") and "_total{" in line:
                name = line.split("{", 1)[0]
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        print("/metrics:", ", ".join(f"{k.removeprefix('servecmp_shadow_')} {v:g}" for k, v in totals.items() if v))
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    report = subprocess.run([sys.executable, "-m", "servecmp", "shadow", "report", "--db", str(db)],
                            capture_output=True, text=True)
    print(report.stdout or report.stderr)
    print(f"database and proxy log in {work}")


if __name__ == "__main__":
    main()
