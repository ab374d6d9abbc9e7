"""How long the command line takes to start: `servecmp --help` and every `servecmp <command> --help`.

    python scripts/bench_cli.py [--runs 5] [--budget 0.3] [--top 15] [--importtime-command "mcq"]

1. Wall time of each ``python -m servecmp [COMMAND ...] --help`` (the median of --runs fresh
   processes), beside a bare ``python -c pass`` for the interpreter's own start; over-budget marked.
2. ``python -X importtime`` of one of them (the slowest, or --importtime-command): the packages
   whose modules take longest to import (their own time, summed over the package), each with the
   servecmp module under which most of that time is spent, and the servecmp modules' cumulative
   import times.

Prints figures; asserts nothing. `scripts/bench_mcq.py` prints the first figures too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

BUDGET_S = 0.3
#: What `python -m servecmp` imports at its own top level; anything else at the top level of
#: importtime's tree was imported by a function call.
_ENTRY_MODULES = {"servecmp", "servecmp._cli.main", "servecmp.__main__"}


def commands() -> list[list[str]]:
    """[] (the top level) and every command and subcommand of the CLI, as argument lists."""
    import typer.main

    from servecmp._cli.main import build_app

    out: list[list[str]] = [[]]

    def walk(cmd: object, path: list[str]) -> None:
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            if getattr(sub, "hidden", False):
                continue
            out.append([*path, name])
            walk(sub, [*path, name])

    try:
        walk(typer.main.get_command(build_app()), [])
    except Exception as exc:  # noqa: BLE001 - a command module that does not import: time the rest
        from servecmp._cli.main import COMMANDS

        print(f"(listing the commands failed: {type(exc).__name__}: {exc}; timing the top-level ones)")
        out += [[name] for name in COMMANDS]
    return out


def _env() -> dict[str, str]:
    # No bytecode writing differences between runs; the same terminal width for every help.
    return {**os.environ, "COLUMNS": "100", "PYTHONDONTWRITEBYTECODE": "1"}


class CommandFailed(Exception):
    pass


def wall(argv: list[str], runs: int) -> float:
    """Median wall seconds of `argv` over `runs` fresh processes (after one warm-up run);
    CommandFailed with the last line of its stderr when it does not exit 0."""
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=_env())
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            last = (proc.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            raise CommandFailed(f"exited {proc.returncode}: {last[:160]}")
        if i:  # the first run warms the page cache and writes bytecode
            times.append(elapsed)
    return statistics.median(times)


def time_cli(runs: int = 5, cmds: list[list[str]] | None = None) -> dict[str, float | str]:
    """{"servecmp [cmd] --help": median wall seconds, or why it failed}, plus "python -c pass"."""
    out: dict[str, float | str] = {"python -c pass": wall([sys.executable, "-c", "pass"], runs)}
    for cmd in cmds if cmds is not None else commands():
        label = " ".join(["servecmp", *cmd, "--help"])
        try:
            out[label] = wall([sys.executable, "-m", "servecmp", *cmd, "--help"], runs)
        except CommandFailed as exc:
            out[label] = str(exc)
    return out


@dataclass
class Imported:
    name: str
    self_us: int
    cumulative_us: int
    depth: int
    parent: int | None = None  # index of the module whose import triggered this one


def import_tree(argv: list[str]) -> list[Imported]:
    """`python -X importtime ARGV`, parsed: one entry per module, children before parents."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=_env())
    rows: list[Imported] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:") :].split("|", 2)
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line
        raw = fields[2]  # one space, two per nesting level, the module name
        depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2
        rows.append(Imported(raw.strip(), int(fields[0]), int(fields[1]), depth))
    # A module's parent is the first later entry one level up (importtime prints children first).
    pending: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        for child in pending.pop(row.depth + 1, []):
            rows[child].parent = i
        pending.setdefault(row.depth, []).append(i)
    return rows


def _servecmp_ancestor(rows: list[Imported], i: int) -> str:
    """The servecmp modules whose imports led to row i: the nearest < the outermost."""
    chain: list[int] = []
    j = rows[i].parent
    while j is not None:
        if rows[j].name.split(".")[0] == "servecmp":
            chain.append(j)
        j = rows[j].parent
    if chain:
        names = [rows[k].name for k in chain]
        text = " < ".join(names) if len(names) <= 2 else f"{names[0]} < ... < {names[-1]}"
        outer = rows[chain[-1]]
        if outer.depth == 0 and outer.name not in _ENTRY_MODULES:
            # Top level yet not the entry point: a function imported it (e.g. a command's register()).
            text += " (imported by a function)"
        return text
    # Top level and not servecmp: imported by a function call after the imports (e.g. while the
    # commands register), or by the interpreter's start-up (site, encodings).
    return "(a function call or start-up)"


def heaviest_imports(rows: list[Imported], top: int) -> list[tuple[str, float, str]]:
    """[(top-level package, ms, what pulls it in)], heaviest first. A package's ms is the own
    ("self") import time of all its modules, wherever they were imported from; what pulls it in is
    the servecmp module under which most of that time was spent."""
    own: dict[str, float] = {}
    by: dict[str, dict[str, float]] = {}
    for i, row in enumerate(rows):
        pkg = row.name.split(".")[0]
        if pkg == "servecmp" or pkg.startswith("__editable__"):
            continue
        own[pkg] = own.get(pkg, 0.0) + row.self_us / 1000
        where = by.setdefault(pkg, {})
        ancestor = _servecmp_ancestor(rows, i)
        where[ancestor] = where.get(ancestor, 0.0) + row.self_us / 1000
    found = []
    for pkg, ms in own.items():
        ranked = sorted(by[pkg].items(), key=lambda kv: -kv[1])
        via = ranked[0][0] + (f" (+{len(ranked) - 1} more)" if len(ranked) > 1 else "")
        found.append((pkg, ms, via))
    found.sort(key=lambda t: -t[1])
    return found[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (median taken)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds a --help may take")
    parser.add_argument("--top", type=int, default=15, help="heaviest imports to list")
    parser.add_argument("--importtime-command", help="the command whose imports to list (default: the slowest)")
    args = parser.parse_args()

    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"median of {args.runs} runs, wall")
    figures = time_cli(args.runs)
    print(f"  {'python -c pass':40} {figures.pop('python -c pass'):6.3f} s  (the interpreter alone)")
    for label, seconds in figures.items():
        if isinstance(seconds, str):
            print(f"  {label:40} FAILED {seconds}")
        else:
            print(f"  {label:40} {seconds:6.3f} s  {'OK' if seconds <= args.budget else 'OVER'}")
    timed = {k: v for k, v in figures.items() if isinstance(v, float)}
    slowest = max(timed, key=timed.__getitem__) if timed else "servecmp --help"
    label = ("servecmp " + args.importtime_command + " --help") if args.importtime_command else slowest
    argv = ["-m", "servecmp", *label.split()[1:]]
    rows = import_tree(argv)
    total = sum(r.self_us for r in rows) / 1000
    print(f"\nimports of `{label}` (python -X importtime): {len(rows)} modules, {total:.0f} ms")
    print(f"  {'package':24} {'own time':>10}  pulled in (mostly) by")
    for pkg, ms, by in heaviest_imports(rows, args.top):
        print(f"  {pkg:24} {ms:8.1f} ms  {by}")
    ours: dict[str, float] = {}
    for r in rows:
        if r.name.split(".")[0] == "servecmp":
            ours[r.name] = max(ours.get(r.name, 0.0), r.cumulative_us / 1000)
    print("  servecmp modules (cumulative, their imports included):")
    for name, ms in sorted(ours.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {name:40} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
