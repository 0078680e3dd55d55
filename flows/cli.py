"""The ``crashsearch`` command line. Every command takes ``--home``.

This module keeps the table of commands and the one error and signal handler (``main``). Each
command's arguments and handler sit together in its module under flows/commands/; parsing stays
light (no torch import): a handler imports the module that does the work only when it runs.
"""
from __future__ import annotations

import argparse
import copy
import errno
import os
import signal
import sys
from typing import Callable, NamedTuple

from crashsearch.flows.commands import (analyze, benchmark, bugfix, campaign, champion, demo, extract, history, predict,
                                        space, status, synth)
from crashsearch.lab.settings import check_home, resolve_home


class Command(NamedTuple):
    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # returns the process exit code
    help: str  # %-formatted by argparse in the command list: write % as %%
    # "writes": the home is created when missing; "reads": it must exist and nothing is written into it;
    # "none": no home is read (a space file, a model package)
    home: str = "writes"


# Every command, in the order `crashsearch --help` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("space", space.add_arguments, space.run, "describe a configuration space", home="none"),
    Command("synth", synth.add_arguments, synth.run, "write a synthetic dashcam dataset (H.264, Nexar layout)"),
    Command("extract", extract.add_arguments, extract.run, "extract backbone embeddings into the Parquet feature cache"),
    Command("campaign", campaign.add_arguments, campaign.run, "run (or resume) a search campaign"),
    Command("demo", demo.add_arguments, demo.run,
            "the whole pipeline on a synthetic dataset: no GPU, keys or downloads needed"),
    Command("query", history.add_query_arguments, history.query,
            "run read-only SQL over the history (views: experiments, campaigns, bugfix_events)", home="reads"),
    Command("leaderboard", history.add_leaderboard_arguments, history.leaderboard,
            "best cells by mean validation AP with replicates and 95%% interval", home="reads"),
    Command("import", history.add_import_arguments, history.import_,
            "import an external experiment log (CSV or Parquet) as a campaign"),
    Command("export", history.add_export_arguments, history.export, "export one campaign as a single Parquet file",
            home="reads"),
    Command("compact", history.add_compact_arguments, history.compact,
            "merge a campaign's small log files into one (safe while campaigns read and write)", home="reads"),
    Command("catalog", history.add_catalog_arguments, history.catalog,
            "(re)build <home>/history.duckdb, the history as views any DuckDB client opens read-only", home="reads"),
    Command("bugfix", bugfix.add_arguments, bugfix.run, "declare a bug-fix event (default: the current code version "
                                                       "fixes a bug, for every campaign), or list the events"),
    Command("analyze", analyze.add_arguments, analyze.run, "statistics and the report for a campaign"),
    Command("check", history.add_check_arguments, history.check,
            "find damaged history files; --repair moves them to <home>/quarantine/ (never deletes)", home="reads"),
    Command("benchmark", benchmark.add_arguments, benchmark.run,
            "compare search policies on a surrogate (or table) of a recorded history"),
    Command("status", status.add_arguments, status.run, "running and recent campaigns", home="reads"),
    Command("champion", champion.add_arguments, champion.run, "package a campaign's leader as a detector: ONNX head, "
                                                              "state dict, feature spec, alert threshold and model card"),
    Command("predict", predict.add_arguments, predict.run,
            "run a packaged detector on videos: per video max risk and alert time", home="none"),
)

INTERRUPTED = "interrupted; finished experiments are kept"
HOME_HINT = "; point at one with --home DIR or CRASHSEARCH_HOME=DIR"  # after "no crashsearch home at PATH"
# commands that only read the home: they never create a folder in it
READING_COMMANDS = tuple(c.name for c in COMMANDS if c.home != "writes")
NO_HOME = tuple(c.name for c in COMMANDS if c.home == "none")


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="state directory (default: $CRASHSEARCH_HOME or ./crashsearch-data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crashsearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, formatter_class=DefaultsFormatter,
                           description=command.help.replace("%%", "%"))  # help is %-formatted, a description not
        _add_home(p)
        command.add_arguments(p)
        p.set_defaults(handler=command.run)
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
        if args.command in READING_COMMANDS and args.command not in NO_HOME:
            check_home(resolve_home(args.home, create=False))
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
                _forget_unhandled_interrupt()
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


def _forget_unhandled_interrupt() -> None:
    """Tell CPython the Ctrl-C was handled. CPython 3.11 marks a KeyboardInterrupt that leaves an
    ``exec()`` of a string as unhandled, in a flag its exit reads even after a caller caught it; scipy
    and numpy import modules by ``exec("from numpy import *")``, so a Ctrl-C during such an import
    (the first leaderboard of a run) ended the process by SIGINT (exit -2) after it reported exit
    130 (strace: the exit set SIGINT to SIG_DFL and killed itself). A Python without the symbol
    keeps the flag elsewhere and is left alone."""
    import ctypes

    try:
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (ValueError, AttributeError, OSError):
        pass


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
