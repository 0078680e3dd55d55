"""The ``crashsearch`` command line. Every command takes ``--home``.

Argument parsing lives here and stays light (no torch import); each handler imports the module
that does the work only when its command runs.
"""
from __future__ import annotations

import argparse
import copy
import errno
import os
import signal
import sys
from typing import Callable

from crashsearch.lab.settings import check_home, resolve_home


INTERRUPTED = "interrupted; finished experiments are kept"
HOME_HINT = "; point at one with --home DIR or CRASHSEARCH_HOME=DIR"  # after "no crashsearch home at PATH"
# commands that only read the home: they never create a folder in it
READING_COMMANDS = ("query", "leaderboard", "export", "status", "check", "space", "compact", "catalog", "predict")


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="state directory (default: $CRASHSEARCH_HOME or ./crashsearch-data)")


# ---- handlers -------------------------------------------------------------------------------
# Each returns a process exit code. Owners: see the module each one imports.

def cmd_space(args) -> int:
    from crashsearch.lab.space import Space

    space = Space.load(args.space)
    print(space.describe())
    return 0


def cmd_synth(args) -> int:
    from crashsearch.lab.synth import main as synth_main

    return synth_main(args)


def cmd_extract(args) -> int:
    from crashsearch.flows.extract import main as extract_main

    return extract_main(args)


def cmd_campaign(args) -> int:
    from crashsearch.flows.campaign import main as campaign_main

    return campaign_main(args)


def cmd_demo(args) -> int:
    from crashsearch.flows.demo import main as demo_main

    return demo_main(args)


def cmd_store(args) -> int:
    from crashsearch.lab.store_cli import cli_main

    return cli_main(args)


def cmd_catalog(args) -> int:
    from crashsearch.lab.catalog import cli_main

    return cli_main(args)


def cmd_bugfix(args) -> int:
    from crashsearch.lab.versions import cli_bugfix

    return cli_bugfix(args)


def cmd_analyze(args) -> int:
    from crashsearch.flows.analyze import main as analyze_main

    return analyze_main(args)


def cmd_check(args) -> int:
    from crashsearch.lab.check import cli_main as check_main

    return check_main(args)


def cmd_benchmark(args) -> int:
    from crashsearch.flows.benchmark import main as benchmark_main

    return benchmark_main(args)


def cmd_champion(args) -> int:
    from crashsearch.flows.champion import main as champion_main

    return champion_main(args)


def cmd_predict(args) -> int:
    from crashsearch.flows.predict import main as predict_main

    return predict_main(args)


def cmd_status(args) -> int:
    from crashsearch.flows.status import main as status_main

    return status_main(args)


# ---- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crashsearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help.replace("%%", "%"),  # help is %-formatted, a description not
                           formatter_class=DefaultsFormatter)
        _add_home(p)
        p.set_defaults(handler=handler)
        return p

    p = command("space", cmd_space, "describe a configuration space")
    p.add_argument("--space", default=None, help="space YAML (default: the 108,000-cell collision space)")

    p = command("synth", cmd_synth, "write a synthetic dashcam dataset (H.264, Nexar layout)")
    p.add_argument("--out", default=None, help="dataset folder (default: <home>/datasets/synth-<style>)")
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default="day", choices=["day", "night"])
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0,
                   help="clip length (>= 2); positive events sit at >= 6.8 s, or in the last second of a clip under 7.1 s")

    p = command("extract", cmd_extract, "extract backbone embeddings into the Parquet feature cache")
    p.add_argument("--dataset", required=True, help="dataset folder (Nexar train.csv or generic CSV)")
    p.add_argument("--backbone", required=True, help="backbone name, e.g. vjepa2_vitl, r2plus1d_18, pixels")
    p.add_argument("--weights", default="auto", help="auto (pretrained if available, else random), random, or a local path / hub id")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2, help="decoder workers")

    p = command("campaign", cmd_campaign, "run (or resume) a search campaign")
    from crashsearch.tasks.campaign.config import add_cli_arguments  # light: no torch

    add_cli_arguments(p)  # every flag, default and help from CampaignConfig
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print Prefect's per-batch task logs (the Prefect UI always has them)")

    p = command("demo", cmd_demo, "the whole pipeline on a synthetic dataset: no GPU, keys or downloads needed")
    p.add_argument("--videos", type=int, default=None, help="day videos (default 144; night: 4/9 as many)")
    p.add_argument("--budget", type=int, default=60)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run for tests")

    p = command("query", cmd_store, "run read-only SQL over the history (views: experiments, campaigns, bugfix_events)")
    p.add_argument("sql")
    p.add_argument("--out", default=None, help="write the result to .csv or .parquet instead of printing")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="cancel the query after this long")
    p.set_defaults(store_command="query")

    p = command("leaderboard", cmd_store, "best cells by mean validation AP with replicates and 95%% interval")
    p.add_argument("--campaign", default=None)
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(store_command="leaderboard")

    p = command("import", cmd_store, "import an external experiment log (CSV or Parquet) as a campaign")
    p.add_argument("file")
    p.add_argument("--campaign", required=True)
    p.add_argument("--space", default=None, help="the log's space YAML, kept with the campaign (default: the "
                                                 "campaign's own, else the collision space)")
    p.set_defaults(store_command="import")

    p = command("export", cmd_store, "export one campaign as a single Parquet file")
    p.add_argument("--campaign", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(store_command="export")

    p = command("compact", cmd_store, "merge a campaign's small log files into one (safe while campaigns read and write)")
    p.add_argument("--campaign", default=None, help="default: every campaign")
    p.set_defaults(store_command="compact")

    command("catalog", cmd_catalog, "(re)build <home>/history.duckdb, the history as views any DuckDB client opens read-only")

    p = command("bugfix", cmd_bugfix, "declare a bug-fix event (default: the current code version fixes a bug, "
                                      "for every campaign), or list the events")
    p.add_argument("--note", default=None, help="what was fixed (required unless --list); with --remove: why")
    p.add_argument("--campaign", default=None, help="the one campaign the fix concerns (default: all campaigns)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--version", default=None, metavar="V",
                      help="rows recorded with code version V, and any version first seen after it, are post-fix")
    when.add_argument("--at", default=None, metavar="TIME", help="rows finished at or after TIME (ISO 8601) are post-fix")
    p.add_argument("--list", action="store_true", help="show the events (with --campaign: those that concern it)")
    p.add_argument("--remove", default=None, metavar="EVENT_ID",
                   help="withdraw an event (a typo): recorded in the log, which keeps the event; --note says why")

    p = command("analyze", cmd_analyze, "statistics and the report for a campaign")
    p.add_argument("--campaign", required=True)
    p.add_argument("--control-arms", default=None, metavar="POLICIES",
                   help="first train from-scratch arms (any of random,tpe,evolution,claude,gemini), each policy alone "
                        "with the campaign's budget, dataset, space and backbones; an arm already complete is reused")
    p.add_argument("--repeats", type=int, default=3, metavar="R",
                   help="independent seeds per control arm (default 3): the verdict's intervals are over repeats")

    p = command("check", cmd_check, "find damaged history files; --repair moves them to <home>/quarantine/ (never deletes)")
    p.add_argument("--campaign", default=None, help="default: every campaign")
    p.add_argument("--repair", action="store_true", help="keep their readable rows, then move the files to quarantine")

    p = command("benchmark", cmd_benchmark, "compare search policies on a surrogate (or table) of a recorded history")
    p.add_argument("--campaign", required=True, help="the history: a campaign's own rows or an imported log")
    p.add_argument("--policies", default="random,tpe,evolution", help="comma list; claude and gemini run when their keys are set")
    p.add_argument("--budget", type=int, default=100, help="experiments per run")
    p.add_argument("--repeats", type=int, default=10, help="runs per policy, each with its own seed")
    p.add_argument("--objective", choices=["surrogate", "table"], default="surrogate",
                   help="surrogate: a model fitted to the ok rows answers any cell; table: recorded cells only, misses count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: <home>/benchmarks/<campaign>-<timestamp>)")
    p.add_argument("--space", default=None, help="the history's space YAML (default: the one the campaign's run or "
                                                 "import kept, else the collision space)")
    p.add_argument("--workers", type=int, default=None, help="processes for the offline policies (default: 2 or the cores)")
    p.add_argument("--round-size", type=int, default=12, help="proposals asked per round, as in a campaign")
    p.add_argument("--max-usd", type=float, default=25.0, help="each LLM agent's dollar budget over all its repeats")

    p = command("status", cmd_status, "running and recent campaigns")

    p = command("champion", cmd_champion, "package a campaign's leader as a detector: ONNX head, state dict, "
                                          "feature spec, alert threshold and model card")
    p.add_argument("--campaign", required=True)
    p.add_argument("--cell", type=int, default=None, help="the cell id to package (default: the leader)")
    p.add_argument("--out", required=True, help="the package folder")

    p = command("predict", cmd_predict, "run a packaged detector on videos: per video max risk and alert time")
    p.add_argument("--model", required=True, help="a package folder written by `crashsearch champion`")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files, folders of videos, or a dataset manifest")
    p.add_argument("--out", default=None, help="write the results to FILE.csv or FILE.json (default: print)")
    p.add_argument("--plots", default=None, metavar="DIR", help="one PNG per video: risk over time, threshold, event")
    p.add_argument("--device", default="auto", help="backbone device: auto, cpu, cuda")
    return parser


class DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default: "(default: X)" after its help, unless the help already
    names it or there is none worth showing (None, False, an empty list). Unlike
    ArgumentDefaultsHelpFormatter it also shows the default of an option without help text."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _shows_default(action) and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    return bool(action.option_strings) and not (default is None or default is False or default == []
                                                or default == argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code. A user's mistake (a UserError: a bad id, file or
    number, a busy campaign; a full disk or a forbidden folder) is one line on stderr, exit 2;
    Ctrl-C or SIGTERM one line, exit 130; anything else ``internal error: <line>`` with the
    traceback written to a file it names (lab/errors.py), exit 70. ``CRASHSEARCH_DEBUG=1`` shows
    the traceback instead."""
    # The first second goes to imports. Ctrl-C and SIGTERM are held meanwhile and arrive when
    # released, as one line and exit 130: a signal during duckdb's import aborts the process
    # ("Critical nanobind error", exit -6) and one during pandas' printed a traceback.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        try:
            import duckdb  # noqa: F401  (every command that reads the history needs it)

            from crashsearch.flows.runtime import configure_prefect_env, prefect_home_with  # light: no prefect import
            from crashsearch.lab.cpu import configure_cpu_threads
            from crashsearch.lab.lock import ending_status, raise_on_sigterm

            args = build_parser().parse_args(argv)
            raise_on_sigterm()  # SIGTERM unwinds like Ctrl-C: campaign.json says interrupted, temp files go
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held signal is raised here
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    try:
        writes = args.command not in READING_COMMANDS or getattr(args, "repair", False)
        # a wrong folder is not an empty home; space and predict read no home (a space file, a model package)
        if args.command in READING_COMMANDS and args.command not in ("space", "predict"):
            check_home(resolve_home(args.home, create=False).root)
        args.home_dir = resolve_home(args.home, create=writes)
        if writes:
            check_writable(args.home_dir.root)  # a read-only home fails here, before any flow starts
            prefect_home_with(args.home_dir.root)  # before prefect is imported: the home keeps its local runs
        configure_cpu_threads()  # before torch is imported: OpenMP threads on the cores free, not spinning
        configure_prefect_env()  # every command that starts a temporary Prefect server gets the quiet defaults
        return int(args.handler(args) or 0)
    except BaseException as exc:  # noqa: BLE001  (sorted below: user errors, interrupts, the rest)
        if os.environ.get("CRASHSEARCH_DEBUG") or isinstance(exc, SystemExit):
            raise
        if ending_status(exc) == "interrupted":
            # the exit is decided: a second signal (a repeated Ctrl-C, a group signal reaching us twice) while it is
            # reported must not escape main() as a KeyboardInterrupt, which ends Python by SIGINT (exit -2, not 130)
            if _is_the_process():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(INTERRUPTED, file=sys.stderr)
            return 130
        from crashsearch.lab.errors import INTERNAL_EXIT, is_user_error, report_internal

        if is_user_error(exc):
            hint = HOME_HINT if "crashsearch home" in str(exc) else ""
            print(f"{args.command}: {user_message(exc)}{hint}", file=sys.stderr)
            return 2
        # not the user's doing: say so, and keep the traceback for a bug report
        # a reading command writes nothing into the home, not even this report (it goes to a temp folder)
        home = getattr(getattr(args, "home_dir", None), "root", None) if writes else None
        where = report_internal(exc, home)
        print(f"{args.command}: internal error: {user_message(exc)}"
              + (f" (traceback in {where})" if where else ""), file=sys.stderr)
        return INTERNAL_EXIT


def _is_the_process() -> bool:
    """Whether main() runs as the command itself (`crashsearch`, `python -m crashsearch`), not called
    in-process by a caller (a notebook, a test) whose signal handlers are not ours to change."""
    return os.path.basename(sys.argv[0] or "") in ("crashsearch", "__main__.py")


def check_writable(root) -> None:
    """Raise OSError naming ``root`` unless a file can be created in it."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=root, prefix=".write-probe-", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(root)) from None
    os.close(fd)
    os.unlink(name)


def user_message(exc: BaseException) -> str:
    """One line for a user's error: the first line of its message, with the path for OS errors."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}" + (" (the disk is full; everything recorded is kept)"
                                            if exc.errno == errno.ENOSPC else "")
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
