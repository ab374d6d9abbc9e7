"""Metrics comparing a baseline and a candidate endpoint, as pure functions over numpy arrays.

Following Dutta et al., "Accuracy is Not All You Need" (2024), equal accuracy is not enough for a
quantized model to replace its baseline: it must also give the same answers. The modules:

- `servecmp.metrics.stats`: generic statistics reused across features (bootstrap intervals,
  Wilson intervals, exact McNemar, Wilcoxon, correlations, distribution summaries);
- `servecmp.metrics.mcq`: multiple-choice metrics from ``(n, k)`` option-logprob matrices
  (choices, acc_norm, flips, answer changes, option KL, top margin, per-group breakdown);
- `servecmp.metrics.kl`: the top-k next-token KL lower bound (its docstring states the estimator
  and its guarantees), the tighter top-k estimate (`topk_kl_tight`), KL in both directions and
  Jensen-Shannon (`divergences`, `cell_divergences`) and an exact full-vocabulary reference;
- `servecmp.metrics.kl_report`: llama.cpp's ``perplexity --kl-divergence`` statistics (`kl_report`,
  printed in llama.cpp's layout by `llama_cpp_text`) over any per-position arrays;
- `servecmp.metrics.floor`: the noise floor (an endpoint against itself) and a candidate's excess
  over it (paired bootstrap, exact McNemar, Wilcoxon);
- `servecmp.metrics.summary`: `summarize_mcq`, everything above as one JSON-ready dict;
- (`servecmp.mcq.from_records.summarize_records` does the same from two runs' `McqRecord`s: it lives in
  the MCQ feature, since records are its run files.)

Conventions. "diff"/"delta" is candidate − baseline. KL is KL(baseline ‖ candidate) in nats (the
headline; ``_cb`` names KL(candidate ‖ baseline), ``js`` Jensen-Shannon).
Choices are argmax with ties to the lowest option index; an item whose option logprobs are all
``-inf`` is unanswered (choice -1, counted wrong, left out of option KL and top margin). Intervals
are two-sided at ``settings.confidence`` (0.95 by default): percentile bootstrap (scipy, seeded,
``settings.n_boot`` resamples, items resampled as baseline/candidate pairs) for means, Wilson for
proportions.

Layout of `summarize_mcq`'s dict (``summarize_records`` adds ``pairing`` and ``tasks``). Three
record shapes recur:

- Estimate: ``{"point", "low", "high", "n"}``;
- Proportion: ``{"count", "n", "rate", "low", "high"}``;
- Distribution: ``{"n", "mean", "median", "p90", "p99", "max", "mean_ci": Estimate}``.

Numbers that are undefined (empty subsets, constant inputs to a test) are ``null``, never NaN::

    schema          "servecmp.mcq_summary/3"
    version         3
    settings        {confidence, n_boot, seed, kl_units: "nats", prob_floor, margin_edges}
    n_items         paired items compared
    n_options       k (columns of the option matrices, after padding)
    no_answer       {baseline: int, candidate: int}   items with no finite option logprob
    accuracy        {baseline: Estimate, candidate: Estimate, diff: Estimate}
    flips           {n, flips, correct_to_wrong, wrong_to_correct, rate: Proportion, mcnemar_p}
    answer_changes  Proportion (items whose chosen option differs)
    acc_norm        null, or {accuracy, flips, answer_changes} as above with length-normalised choices
    option_kl       Distribution of the per-item option KL + {n_floored}
    option_kl_cb    the same for KL(candidate ‖ baseline) over the options
    option_js       Distribution of the per-item Jensen-Shannon divergence over the options
    topk_kl         null, or {n, kl_hat: Distribution, unresolved_baseline_mass: Distribution,
                    n_exact (items with p_R = q_R = 0), n_floored, shared_tokens: {mean, min}, estimator,
                    kl_cb_hat: Distribution, js_hat: Distribution  (lower bounds over the same cells),
                    tight: {n, kl_bc, kl_cb, js: Distribution, n_imputed, n_floored, estimator}}
    next_token_report  null, or llama.cpp's block (`servecmp.metrics.kl_report.KlReport`) over the answer
                    positions: {n, kld_mean: {value, error}, kld_percentiles: {max, p99_9, ..., min},
                    dp_mean, dp_percentiles, dp_rms, same_top_count, same_top, kld_source, dp_token,
                    n_dp_imputed}
    top_margin      {n,
                     by_baseline_correctness: {when_correct: Estimate, when_wrong: Estimate,
                                               mann_whitney_p},
                     change_by_bucket: [{low_edge, high_edge, changes: Proportion}, ...],
                     margin_change_correlation: {n, spearman_r, spearman_p, pearson_r, pearson_p}}
    groups          {<grouping, e.g. "subject">: [{group, n, acc_baseline, acc_candidate, delta_acc,
                     flips, correct_to_wrong, wrong_to_correct, flip_rate, answer_change_rate,
                     mean_option_kl, mean_topk_kl}, ...]}   rows by flip_rate desc, n desc, name
    pairing         (records only) {paired, unpaired_baseline, unpaired_candidate, duplicates_baseline,
                     duplicates_candidate, stored_choice_mismatch: {baseline, candidate}}
    tasks           (records only) sorted task names

`servecmp.mcq.summary.McqSummary` is this layout as a typed model, plus a ``run`` section (where
the records came from: run_dir, task, source, n_items_planned, complete, endpoints,
requests_per_item, item_errors); it is what summary.json and ``--json`` hold.
"""

# The public names are listed once, in each module's __all__ (as asyncio's package does), so that
# a function added to a module's API is re-exported here without a second list to keep in step.
from servecmp.metrics import kl as _kl
from servecmp.metrics import kl_report as _kl_report
from servecmp.metrics import mcq as _mcq
from servecmp.metrics import stats as _stats
from servecmp.metrics import summary as _summary
from servecmp.metrics.kl import *  # noqa: F403
from servecmp.metrics.kl_report import *  # noqa: F403
from servecmp.metrics.mcq import *  # noqa: F403
from servecmp.metrics.stats import *  # noqa: F403
from servecmp.metrics.summary import *  # noqa: F403

__all__: list[str] = []
__all__ += _kl.__all__
__all__ += _kl_report.__all__
__all__ += _mcq.__all__
__all__ += _stats.__all__
__all__ += _summary.__all__
