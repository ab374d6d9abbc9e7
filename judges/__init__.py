"""LLM-as-a-judge for MT-Bench: prompts, rating/verdict parsing, pairwise rules, cache, cost guard.

A judge is any OpenAI-compatible chat endpoint (GPT-4-class through OpenAI's API, or an open model
behind vLLM), reached through servecmp's EndpointClient.
"""

from servecmp.judges.cache import JudgeCache, cache_key
from servecmp.judges.cost import CostEstimate, confirm_cost, count_prompt_tokens, is_openai, is_paid_judge
from servecmp.judges.pairwise import PairOutcome, PairTally, combine_games, tally, winner_of
from servecmp.judges.parsing import Rating, parse_rating, parse_verdict
from servecmp.judges.prompts import JudgePrompts, load_judge_prompts, render_pair, render_single
from servecmp.judges.runner import JudgeBudgetExhausted, JudgeReply, JudgeRunner, JudgeUnavailable

__all__ = [
    "CostEstimate",
    "JudgeBudgetExhausted",
    "JudgeCache",
    "JudgePrompts",
    "JudgeReply",
    "JudgeRunner",
    "JudgeUnavailable",
    "PairOutcome",
    "PairTally",
    "Rating",
    "cache_key",
    "combine_games",
    "confirm_cost",
    "count_prompt_tokens",
    "is_openai",
    "is_paid_judge",
    "load_judge_prompts",
    "parse_rating",
    "parse_verdict",
    "render_pair",
    "render_single",
    "tally",
    "winner_of",
]
