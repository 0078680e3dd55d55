"""What `crashsearch status` shows (flows/commands/status.py): running and recent campaigns at a glance.

For each campaign under the home: its status (a campaign.json that says "running" but whose
pid is dead on this host is shown as "stopped (crashed?)"), experiments done against the
budget, experiments in flight (distributed batches dispatched but not recorded yet, from
``inflight.json``), the best validation AP, the number of failures and the latest failure's
error class and message. One DuckDB query over the store covers every campaign; nothing here
talks to Prefect, so it answers also while no server runs.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from crashsearch.lab.lock import campaign_liveness
from crashsearch.lab.bounds import skip_entry
from crashsearch.lab.logfiles import campaign_key
from crashsearch.lab.settings import Home
from crashsearch.lab.store import Store

RECENT = 10  # campaigns shown besides the running ones
INFLIGHT_FILE = "inflight.json"  # written by flows/distributed.py

_SUMMARY_SQL = """
SELECT campaign,
       count(*) FILTER (WHERE status != 'invalid') AS done,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       max(val_ap) FILTER (WHERE status IN ('ok', 'healed') AND NOT isnan(val_ap)) AS best_val_ap,
       -- a TrainingError's message already starts with its class (str(exc)); other errors' do not
       arg_max(CASE WHEN starts_with(coalesce(error_message, ''), error_class || ': ') THEN error_message
                    ELSE error_class || ': ' || coalesce(error_message, '') END, finished_at)
           FILTER (WHERE status = 'failed') AS last_error,
       max(finished_at) AS last_finished
FROM experiments GROUP BY campaign
"""


def _in_flight(home: Home, campaign: str, store: Store) -> int:
    """Experiments of dispatched batches that the store does not hold yet (0 without inflight.json)."""
    key = campaign_key(campaign, INFLIGHT_FILE)
    path = store.backend.url(key)  # through the backend: an object-store home has it on the bucket
    try:
        doc = json.loads(store.backend.read(key))
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, RecursionError) as exc:  # damaged: not UTF-8, not JSON, nested beyond reason
        skip_entry(path, "the file", f"unreadable: {str(exc)[:80]}")
        return 0
    runs = doc.get("runs") if isinstance(doc, dict) else None
    if not isinstance(runs, list):
        skip_entry(path, "entry 'runs'", "not a list")
        runs = []
    bad = [n for n, run in enumerate(runs) if not isinstance(run, dict) or not isinstance(run.get("experiment_ids"), list)]
    if bad:
        skip_entry(path, f"entry 'runs[{bad[0]}]'" + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""),
                   "not a dispatched batch with a list of experiment_ids")
    ids = [i for n, run in enumerate(runs) if n not in bad for i in run["experiment_ids"]
           if isinstance(i, str)]  # a damaged file counts what it still says, never fails the status
    if not ids:
        return 0
    found = store.query("SELECT DISTINCT experiment_id FROM experiments WHERE campaign = ? AND list_contains(?, experiment_id)",
                        [campaign, ids]) if store.log_files(campaign) else None
    done = set() if found is None else set(found["experiment_id"])
    return sum(1 for i in ids if i not in done)


def campaign_status(home: Home, recent: int = RECENT) -> list[dict[str, Any]]:
    """One dict per campaign to show: running ones first, then the ``recent`` latest updated.

    Keys: campaign, status, dataset, done, budget, in_flight, failed, best_val_ap, last_error,
    updated_at. Campaign folders without campaign.json or experiments are left out.
    """
    store = Store(home)
    infos = {c["id"]: c for c in store.campaigns()}
    summary = store.query(_SUMMARY_SQL) if store.log_files() else None
    rows = {} if summary is None else {r["campaign"]: r for r in summary.to_dict("records")}
    out = []
    for cid in sorted(set(infos) | set(rows)):
        info, row = infos.get(cid, {}), rows.get(cid, {})
        if len(info) <= 1 and not row:  # an empty folder
            continue
        status = campaign_liveness(info)  # the one liveness check (lab/lock.py)
        in_flight = _in_flight(home, cid, store) if status.startswith("running") else 0
        best = row.get("best_val_ap")
        out.append({
            "campaign": cid, "status": status, "dataset": info.get("dataset"),
            "done": int(row.get("done") or 0), "budget": info.get("budget"), "in_flight": in_flight,
            "failed": int(row.get("failed") or 0),
            "best_val_ap": None if best is None or best != best else float(best),
            # a failed experiment's error, else why the run stopped (e.g. every agent's reply was refused)
            "last_error": next((e for e in (row.get("last_error"), info.get("stop_reason")) if isinstance(e, str) and e), None),
            "updated_at": _latest(info.get("updated_at"), row.get("last_finished")),
        })
    running = [r for r in out if r["status"].startswith("running")]
    others = sorted((r for r in out if not r["status"].startswith("running")),
                    key=lambda r: r["updated_at"] or "", reverse=True)
    return running + others[:recent]


def _latest(*stamps: Any) -> str | None:
    """The latest of ISO strings / timestamps, as an ISO string in UTC to the second."""
    parsed = []
    for stamp in stamps:
        if stamp is None or stamp != stamp:
            continue
        try:
            value = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
        except ValueError:
            continue
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        parsed.append(value.astimezone(timezone.utc))
    return max(parsed).strftime("%Y-%m-%d %H:%M:%S") if parsed else None


def format_status(rows: list[dict[str, Any]], width: int = 70) -> str:
    """The table `crashsearch status` prints (last error cut to ``width`` characters)."""
    header = f"{'campaign':<24} {'status':<19} {'done/budget':>11} {'in flight':>9} {'best val AP':>11} {'failed':>6}  {'updated (UTC)':<19}  last error"
    lines = [header]
    for r in rows:
        budget = "?" if r["budget"] is None else r["budget"]
        best = "-" if r["best_val_ap"] is None else f"{r['best_val_ap']:.4f}"
        error = r["last_error"] or "-"
        error = error if len(error) <= width else error[: width - 3] + "..."
        lines.append(f"{r['campaign']:<24} {r['status']:<19} {str(r['done']) + '/' + str(budget):>11} {r['in_flight']:>9} "
                     f"{best:>11} {r['failed']:>6}  {r['updated_at'] or '-':<19}  {error}")
    return "\n".join(lines)

