"""`servecmp correlate RUN_DIR...`: candidates against one baseline, and how their measures correlate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from servecmp._cli.common import Html, Json
from servecmp.errors import UserError


def _fmt(x: float | int | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def register(app: typer.Typer) -> None:
    @app.command()
    def correlate(
        run_dirs: Annotated[
            list[Path], typer.Argument(help="MCQ, MT-Bench and gen run directories, one baseline.")
        ],
        plot: Annotated[
            Path, typer.Option(help="Where to write the flips vs ΔMT-Bench scatter plot (PNG).")
        ] = Path("correlate-flips-vs-mtbench.png"),
        kl: Annotated[
            str, typer.Option(help="KL to report: option (over the answer options) or topk.")
        ] = "option",
        as_json: Json = False,
        html: Html = None,
    ) -> None:
        """Per candidate: Δaccuracy, flips, KL, ΔMT-Bench, and how they correlate (Spearman, Pearson)."""
        if kl not in ("option", "topk"):
            raise UserError(f"--kl must be option or topk, not {kl!r}")
        if html is not None:
            from servecmp.html import check_writable

            check_writable(html)
        # Imported here: scipy and numpy cost ~1 s, which --help must not pay.
        from rich.console import Console
        from rich.table import Table

        from servecmp import correlate as corr

        kl_source: corr.KlSource = "option" if kl == "option" else "topk"
        runs = [facts for d in run_dirs for facts in corr.read_runs(d, kl_source)]
        rows, warnings = corr.pair_runs(runs)
        results = corr.correlations(rows)
        wrote = corr.scatter_plot(rows, plot)
        if html is not None:
            from servecmp.html import render_correlate, write_html

            write_html(html, render_correlate(rows, results, warnings, kl_source, run_dirs))
        err = Console(stderr=True)
        for w in warnings:
            err.print(f"warning: {w}", highlight=False)
        if as_json:
            report = corr.report_dict(rows, results, warnings, plot if wrote else None, kl_source)
            typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
            return
        out = Console()
        table = Table(title="Candidates against one baseline", title_justify="left")
        gen = any(r.gen_run is not None for r in rows)
        for col in ("candidate", "Δaccuracy", "flips", "KL", "ΔMT-Bench", *(("gen flips", "gen TF KL") if gen else ())):
            table.add_column(col, justify="left" if col == "candidate" else "right")
        for r in rows:
            flips = (
                "—"
                if r.flip_rate is None
                else f"{r.flip_rate:.1%} ({_fmt(r.flips, 'd')}/{_fmt(r.n_items, 'd')})"
            )
            extra = (_fmt(r.gen_flip_rate, ".1%"), _fmt(r.gen_tf_kl, ".4f")) if gen else ()
            table.add_row(str(r.candidate), _fmt(r.delta_accuracy, "+.3f"), flips, _fmt(r.kl, ".4f"),
                          _fmt(r.delta_mtbench, "+.2f"), *extra)  # fmt: skip
        out.print(table)
        ctable = Table(title="Correlation across candidates", title_justify="left")
        for col in ("x vs y", "n", "Spearman ρ", "p", "Pearson r", "p"):
            ctable.add_column(col, justify="left" if col == "x vs y" else "right")
        for c in results:
            label = f"{corr.LABELS[c.x]} vs {corr.LABELS[c.y]}"
            if c.note:
                ctable.add_row(label, str(c.result.n), c.note, "", "", "")
                continue
            res = c.result
            ctable.add_row(label, str(res.n), _fmt(res.spearman_r, "+.3f"), _fmt(res.spearman_p, ".3g"),
                           _fmt(res.pearson_r, "+.3f"), _fmt(res.pearson_p, ".3g"))  # fmt: skip
        out.print(ctable)
        methods = sorted({c.result.p_method for c in results if not c.note})
        if methods:
            out.print(f"p-values: two-sided, {', '.join(methods)} (exact over all pairings up to 8 candidates).")
        if len(rows) < corr.MIN_CANDIDATES:
            out.print(f"{len(rows)} candidate(s): a correlation needs at least {corr.MIN_CANDIDATES}.")
        out.print(
            f"scatter plot: {plot}" if wrote else "no scatter plot: no candidate has both flips and ΔMT-Bench"
        )
