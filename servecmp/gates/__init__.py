"""Verdicts and CI gates: may the candidate replace its baseline, by rules the user wrote down?

Pure decision layer: expressions in, estimates in, a `Verdict` (pydantic) out, plus its Markdown and
terminal renderings. No I/O, no knowledge of run directories or summary layouts; the commands turn
their summaries into `MetricEstimate`s and call this module. Split by job: `rules` (the metrics,
expressions, the [gate] table), `estimates` (intervals, a gate's status on one, items to decide),
`decision` (verdicts, exit codes, chance level) and `render` (Markdown, terminal); this package
re-exports their public names.

Typical use::

    gates = gates_for("mcq", cli=["flips<=5%", "kl<=0.01"], table=config_gate_table)
    verdict = decide(gates, {"flips": MetricEstimate.wilson(summary_flips_rate),
                             "kl": MetricEstimate.bootstrap(summary_option_kl_mean_ci)},
                     candidate="w4a16")
    render_verdict(console, verdict)
    Path(summary_md).write_text(verdict_markdown(verdict, "servecmp mcq gates"))
    raise SystemExit(verdict.exit_code)          # or combine(verdicts) over several candidates

API
---
``METRICS: dict[str, MetricInfo]``
    Every gateable metric: run kind ("mcq", "mtbench", "shadow"), unit ("fraction", "nats",
    "points"), one-line description, the range a threshold must lie in, and the reason shown when a
    run does not measure it. ``MetricInfo.rate`` is True for fraction metrics (shares and
    differences of shares): they are shown as percentages and their VALUE may end in ``%``.
``metric_names(kind) -> list[str]``
``parse_gate(expr, kind) -> Gate`` and ``parse_gates(exprs, kind) -> list[Gate]``
``GateConfig`` / ``gates_from_table(table, kind, origin=...) -> list[Gate]``
``gates_for(kind, cli=(), table=None, origin=...) -> list[Gate]``
``MetricEstimate(point, low, high, n, method)`` with ``MetricEstimate.wilson(proportion)`` and
    ``MetricEstimate.bootstrap(estimate)`` (accept the `servecmp.metrics.stats` dataclasses or their
    JSON dicts).
``gate_status(op, threshold, low, high) -> "pass" | "fail" | "inconclusive"``
``items_to_decide(op, threshold, estimate) -> int | None`` and ``wilson_bounds(p, n) -> (low, high)``
``decide(gates, estimates, *, candidate=None, missing=None, notes=()) -> Verdict``
``combine(verdicts) -> int`` (exit code over several candidates)
``verdict_markdown(verdicts, title) -> str`` and ``render_verdict(console, verdict) -> None``
``format_value(x, info)`` / ``format_threshold(t, info)``: numbers in a metric's display unit
``at_chance(acc_low, acc_high, n_options) -> bool``, ``chance_sentence(n_options) -> str`` and
    ``chance_note(acc_low, acc_high, n_options) -> str | None``

Expressions
-----------
``METRIC<=VALUE`` or ``METRIC>=VALUE``; spaces are allowed around the parts, the metric name is
case-insensitive. VALUE is a finite decimal number (``0.05``, ``-0.2``, ``1e-3``); on fraction
metrics it may end in ``%``, meaning VALUE/100 (``flips<=5%`` is ``flips<=0.05``). ``%`` on a nats
or points metric is an error, and so is a threshold outside the metric's range (``flips<=5`` would
be 500%: write ``5%`` or ``0.05``). Every bad expression raises `servecmp.errors.UserError` with one
line saying what is wrong and listing the metric names valid for the run kind.

The ``[gate]`` table of servecmp.toml
-------------------------------------
One key per run kind, each a list of expressions (a single string is accepted too)::

    [gate]
    mcq = ["flips<=5%", "kl<=0.01", "delta_acc>=-1%"]
    mtbench = ["delta_mtbench>=-0.25"]
    shadow = ["answer_differs<=2%"]

Keyed by run kind, not by metric, so that one metric can carry two rules (a band such as
``delta_acc>=-1%`` and ``delta_acc<=1%``) and the file uses the very syntax of ``--gate``.
`GateConfig` is that table as a pydantic section (unknown keys are errors), ready to become
``Config.gate``. `gates_for` applies the project's precedence: ``--gate`` flags given on the command
line replace the file's gates for that kind; otherwise the file's apply.

Decision
--------
Each gate compares the metric's 95% interval [low, high] (the one the report prints: Wilson for
rates, percentile bootstrap for means and differences) with the threshold t, as a closed interval:

- ``<=``: PASS when high <= t (every value in the interval satisfies the rule); FAIL when low > t
  (none does); otherwise INCONCLUSIVE. So high == t passes and low == t does not fail.
- ``>=``: PASS when low >= t; FAIL when high < t; otherwise INCONCLUSIVE. So low == t passes and
  high == t does not fail.

Comparisons are exact float comparisons. A point estimate alone never decides: an estimate without
an interval is INCONCLUSIVE ("no interval"), and one over zero items is INCONCLUSIVE ("no items").
A gate whose metric the run did not measure at all (no `MetricEstimate` for it, e.g. ``topk_kl``
when the endpoints returned no top-k logprobs, ``flips_excess`` without a noise floor) is
UNAVAILABLE, with the reason from ``missing`` or the registry's default. UNAVAILABLE is not an
error: it counts as inconclusive for the exit code, so a gate that cannot be evaluated never passes,
and a config shared by several candidates does not break on the one whose endpoint lacks top-k.

Verdict and exit codes (`servecmp.errors`): EXIT_OK (0) when every gate passes (also when there are
no gates), EXIT_GATE_FAILED (1) when any gate fails, EXIT_INCONCLUSIVE (4) when none fails but one
is inconclusive or unavailable. `combine` applies the same rule across candidates: 0 only when all
pass, 1 if any fails, else 4.

Items to decide
---------------
For an INCONCLUSIVE gate with an interval, an estimate of how many items IN TOTAL (in the unit of
``n``: items, games, requests) would decide it if the observed value and spread held:

- Wilson (``method="wilson"``): the smallest n at which the Wilson 95% interval at the observed rate
  p̂ (the continuous formula, p̂ need not be k/n) decides the gate under the rules above, i.e. lies
  entirely on p̂'s side of the threshold. Found by doubling then binary search over n (the Wilson
  bounds at a fixed p̂ tighten monotonically towards p̂ as n grows). At least ``n + 1``. Since the
  Wilson interval is {p : |p̂ − p| <= z·sqrt(p(1 − p)/n)}, a bound reaches t exactly at
  n* = z²·t(1 − t)/(p̂ − t)², so the answer is ceil(n*) for a PASS-side gate (the bound may touch
  t) and floor(n*) + 1 for a FAIL-side one; the tests check the search against this.
- Bootstrap (``method="bootstrap"``): the half-width on the threshold's side (hw = high − point if
  the threshold is above the point, point − low if below) shrinks as sqrt(n_obs / n); the answer is
  the smallest n with hw · sqrt(n_obs / n) < |point − threshold|, i.e. floor(n_obs · (hw/d)²) + 1.

When the point equals the threshold no number of items decides: ``items_to_decide`` is None and the
reason says "never: estimate equals threshold". Beyond `MAX_ITEMS` the answer is None as well.

Chance level
------------
`at_chance` is True when the baseline's accuracy interval contains 1/n_options (inclusive);
`chance_note` gives the sentence the report prints then ("the baseline's accuracy interval contains
chance (25.0% for 4 options): flips there mostly measure noise among guesses"). Pass it to `decide`
as a note to carry it into the verdict's renderings.
"""

# The public names are listed once, in each module's __all__ (as asyncio's package does), so that
# a name added to a module's API is re-exported here without a second list to keep in step.
from servecmp.gates import decision as _decision
from servecmp.gates import estimates as _estimates
from servecmp.gates import render as _render
from servecmp.gates import rules as _rules
from servecmp.gates.decision import *  # noqa: F403
from servecmp.gates.estimates import *  # noqa: F403
from servecmp.gates.render import *  # noqa: F403
from servecmp.gates.rules import *  # noqa: F403

__all__: list[str] = []
__all__ += _decision.__all__
__all__ += _estimates.__all__
__all__ += _render.__all__
__all__ += _rules.__all__
