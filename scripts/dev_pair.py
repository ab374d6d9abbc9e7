"""Serve the embedded vLLM pair for a while and describe it in a JSON file, for developers.

    .venv/bin/python scripts/dev_pair.py /tmp/pair.json      # Ctrl-C / SIGTERM stops both servers
    SERVECMP_TEST_PAIR=/tmp/pair.json .venv/bin/pytest -m vllm tests/test_x.py

Why: the `vllm_pair` fixture starts two servers per pytest session (1-2 minutes on 2 cores). When
several test sessions run one after another on one machine (development, several worktrees), one
pair serves them all. CI never sets SERVECMP_TEST_PAIR: it starts its own pair once per run.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from servecmp.serving.modelpair import embedded_servers, ensure_embedded_pair
from servecmp.serving.servers import ServerPair


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/servecmp-pair.json")
    models = ensure_embedded_pair()
    servers = embedded_servers(models, baseline_port=18101, candidate_port=18102)
    run_dir = out.with_suffix(".d")
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ServerPair(servers, run_dir=run_dir, show_progress=False) as pair:
        b, c = pair.handles["baseline"], pair.handles["candidate"]
        out.write_text(json.dumps({
            "baseline_url": b.url, "candidate_url": c.url,
            "baseline_model": b.served_name, "candidate_model": c.served_name,
            "baseline_dir": str(models.baseline_dir), "candidate_dir": str(models.candidate_dir),
            "run_dir": str(run_dir),
        }, indent=2))
        print(f"pair ready: {out}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
