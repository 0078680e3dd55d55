"""``crashsearch bugfix``: declare, list or withdraw bug-fix events (lab/versions.py keeps the log)."""
from __future__ import annotations

import sys


def add_arguments(p) -> None:
    p.add_argument("--note", default=None, help="what was fixed (required unless --list); with --remove: why")
    p.add_argument("--campaign", default=None, help="the one campaign the fix concerns (default: all campaigns)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--version", default=None, metavar="V",
                      help="rows recorded with code version V, and any version first seen after it, are post-fix")
    when.add_argument("--at", default=None, metavar="TIME", help="rows finished at or after TIME (ISO 8601) are post-fix")
    p.add_argument("--list", action="store_true", help="show the events (with --campaign: those that concern it)")
    p.add_argument("--remove", default=None, metavar="EVENT_ID",
                   help="withdraw an event (a typo): recorded in the log, which keeps the event; --note says why")


def run(args) -> int:
    """``crashsearch bugfix --note TEXT [--campaign ID] [--version V | --at TIME]`` or ``bugfix --list``."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.versions import declare_bugfix, describe_event

    home = args.home_dir
    if getattr(args, "remove", None) is not None:  # --remove "" is a mistake, not a declaration
        return _remove(home, args)
    if getattr(args, "list", False):
        return _list(home, args)
    if not getattr(args, "note", None):
        print("bugfix: --note TEXT is required (what was fixed); `crashsearch bugfix --list` shows the events", file=sys.stderr)
        return 2
    try:
        campaign, version = getattr(args, "campaign", None), getattr(args, "version", None)
        if campaign or version:
            _check_scope(home, campaign, version)
        event = declare_bugfix(home, args.note, version=version, campaign=campaign, at=getattr(args, "at", None))
    except UserError as exc:  # a full disk goes to flows/cli.py, which names the path
        print(f"bugfix: {exc}", file=sys.stderr)
        return 2
    print(f"declared bug-fix event {event['id']}: {describe_event(_parsed(event))}")
    if event["version"] and not getattr(args, "version", None):
        already = _rows_with_version(home, event["version"], campaign)
        if already:  # the usual mistake: declaring before the fix is in the code
            print(f"note: {already} experiment(s) already ran with this code version and count as post-fix; if the "
                  "fix is not in this code yet, declare it again after the fix (or use --at TIME)")
    print("analysis reports the post-fix subset beside the full history; "
          "re-run the leaders trained before it with `crashsearch campaign ... --rerun-leaders-after-fix K`")
    return 0


def _list(home, args) -> int:
    """``crashsearch bugfix --list [--campaign ID]``: the events, then the removals the log keeps."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.store import Store
    from crashsearch.lab.versions import bugfix_events, describe_event, read_events

    if getattr(args, "campaign", None):
        try:
            Store(home).require_campaign(args.campaign)
        except UserError as exc:
            print(f"bugfix: {exc}", file=sys.stderr)
            return 2
    events = bugfix_events(home, getattr(args, "campaign", None))
    if not events:
        print("no bug-fix events" + (f" concern campaign {args.campaign}" if getattr(args, "campaign", None) else ""))
    for e in events:
        print(f"{e['id']}  declared {e['declared_at'].isoformat(timespec='seconds')}  {describe_event(e)}  -- {e['note']}")
    for r in read_events(home)[1]:  # the log keeps removed events: say so, so nothing vanishes unexplained
        print(f"{r['removes']}  removed {r['declared_at'].isoformat(timespec='seconds')} (removal {r['id']})"
              + (f"  -- {r['note']}" if r["note"] else ""))
    return 0


def _remove(home, args) -> int:
    """``crashsearch bugfix --remove EVENT_ID [--note WHY]``: record the event's removal."""
    from crashsearch.lab.versions import events_location, remove_bugfix

    clash = [flag for flag, name in (("--version", "version"), ("--at", "at"), ("--campaign", "campaign"),
                                     ("--list", "list")) if getattr(args, name, None)]
    if clash:
        print(f"bugfix: --remove takes only --note (why), not {', '.join(clash)}", file=sys.stderr)
        return 2
    try:
        removal = remove_bugfix(home, args.remove, getattr(args, "note", None))
    except (ValueError, OSError) as exc:
        print(f"bugfix: {exc}", file=sys.stderr)
        return 2
    print(f"removed bug-fix event {removal['removes']} (recorded as {removal['id']} in {events_location(home)}); "
          "analysis no longer splits the history at it")
    return 0


def _rows_with_version(home, version: str, campaign: str | None) -> int:
    """How many recorded experiments (of ``campaign``, or all) have code version ``version``; 0 if unreadable."""
    from crashsearch.lab.lock import reraise_interrupt
    from crashsearch.lab.store import Store

    sql = "SELECT count(*) AS n FROM experiments WHERE code_version = $v" + (" AND campaign = $c" if campaign else "")
    try:
        return int(Store(home).query(sql, {"v": version, **({"c": campaign} if campaign else {})})["n"][0])
    except Exception as exc:  # an empty home has no experiments to count
        reraise_interrupt(exc)
        return 0


def _parsed(event: dict) -> dict:
    from crashsearch.lab.bugfix_log import as_utc

    return {**event, "at": as_utc(event["at"]) if event.get("at") else None}


def _check_scope(home, campaign: str | None, version: str | None) -> None:
    """Raise ValueError (one line) for a campaign with no experiments, or a version no row of the scope has."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.lock import reraise_interrupt
    from crashsearch.lab.store import Store

    store = Store(home)
    if campaign is not None:
        store.require_campaign(campaign, experiments=True)
    if version:
        sql = "SELECT DISTINCT code_version FROM experiments" + (" WHERE campaign = $c" if campaign else "")
        try:
            found = store.query(sql, {"c": campaign} if campaign else None)["code_version"]
            known_versions = [v for v in found if isinstance(v, str) and v]  # imported rows may have none (NaN)
        except Exception as exc:  # an empty store has no experiments view to read
            reraise_interrupt(exc)
            known_versions = []
        if version not in known_versions:
            raise UserError(f"no experiment{' of campaign ' + campaign if campaign else ''} has code version "
                             f"{version!r} (known: {', '.join(sorted(known_versions)[:10]) or 'none'})")
