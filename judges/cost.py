"""The cost guard: before paying for judge calls, say how many and how large, and ask.

A judge is "paid" when it is OpenAI's API or any endpoint reached with an API key. Prompt tokens
are counted with tiktoken when its encoding is already on disk (tiktoken downloads encodings on
first use, and servecmp must not reach the internet behind the user's back); otherwise they are
estimated as characters / 4. The report names the method used.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from servecmp.errors import UserError

OPENAI_HOST = "api.openai.com"
PAID_HOSTS = frozenset({OPENAI_HOST})


def _host(base_url: str) -> str:
    # Callers pass a URL already normalised by servecmp.endpoints.normalise_url (an EndpointSpec's
    # base_url), so this only reads its host; it never repairs a URL.
    return (urlsplit(base_url).hostname or "").lower()


def is_openai(base_url: str) -> bool:
    """Whether a normalised base URL is OpenAI's API (where gpt-4 and OPENAI_API_KEY are the defaults)."""
    return _host(base_url) == OPENAI_HOST


def is_paid_judge(base_url: str, api_key_env: str | None) -> bool:
    return _host(base_url) in PAID_HOSTS or bool(api_key_env)


def _tiktoken_cache_dir() -> str:
    # The same lookup as tiktoken.load.read_file_cached.
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _offline_encoding(model: str) -> Any | None:
    """The model's tiktoken encoding if it can be loaded without a download, else None."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "cl100k_base"
    blob = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    cache_dir = _tiktoken_cache_dir()
    if not cache_dir or not os.path.exists(os.path.join(cache_dir, hashlib.sha1(blob.encode()).hexdigest())):
        return None
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # noqa: BLE001 - a corrupt cache must not stop the run, only the exact count
        return None


def count_prompt_tokens(texts: Iterable[str], model: str) -> tuple[int, str]:
    """(token count, method): tiktoken when available offline, else ceil(chars / 4) per text."""
    enc = _offline_encoding(model)
    if enc is not None:
        return sum(len(enc.encode(t, disallowed_special=())) for t in texts), f"tiktoken {enc.name}"
    return sum(math.ceil(len(t) / 4) for t in texts), "estimated as characters/4"


@dataclass(frozen=True)
class CostEstimate:
    calls: int
    cached: int
    prompt_tokens: int
    method: str

    def describe(self, judge: str) -> str:
        return (
            f"{self.calls} judge calls to {judge} (+{self.cached} answered from cache), "
            f"~{self.prompt_tokens:,} prompt tokens ({self.method})"
        )


def refuse_if_unconfirmable(*, paid: bool, assume_yes: bool, is_tty: bool) -> None:
    """Fail before any work when a paid judge would need a confirmation nobody can give."""
    if paid and not assume_yes and not is_tty:
        raise UserError("the judge is a paid API and stdin is not a terminal; pass --yes to confirm the cost")


def confirm_cost(
    estimate: CostEstimate,
    judge: str,
    *,
    paid: bool,
    assume_yes: bool,
    is_tty: bool,
    ask: Callable[[str], bool],
    say: Callable[[str], None],
) -> None:
    """Print the estimate; for a paid judge ask unless --yes. Raises UserError when declined."""
    if estimate.calls == 0 and estimate.cached == 0:
        return
    say(estimate.describe(judge))
    if estimate.calls == 0 or not paid or assume_yes:
        return
    refuse_if_unconfirmable(paid=paid, assume_yes=assume_yes, is_tty=is_tty)
    if not ask("Make these judge calls?"):
        raise UserError("judging cancelled; answers are saved (resume with --resume RUN_DIR)", exit_code=1)
