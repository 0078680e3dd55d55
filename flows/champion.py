"""The nightly champion: the nightly flow packages a campaign's leader as a detector (tasks/champion.py)
when it changed. ``crashsearch champion`` packages one on demand (flows/commands/champion.py)."""
from __future__ import annotations

from crashsearch.lab.lock import reraise_interrupt

CHAMPION_DIR = "champion"  # <home>/campaigns/<id>/champion/: the nightly package (the report links its card)


def nightly_champion(home, campaign: str) -> str | None:
    """Write ``<home>/campaigns/<id>/champion/`` when the leader changed since the last package, and
    publish its card as a Prefect markdown artifact; returns the card's path (None: no leader).
    Never fails the flow: a failure is one line."""
    import shutil

    from crashsearch.lab._io import read_json
    from crashsearch.lab.settings import Home, resolve_home
    from crashsearch.tasks.champion import leader_cell, write_champion

    h = home if isinstance(home, Home) else resolve_home(home)
    folder = h.campaign(campaign) / CHAMPION_DIR
    try:
        leader = leader_cell(h, campaign)
        if leader is None:
            return None
        current = read_json(folder / "card.json") or {}
        if current.get("cell_id") == leader:
            print(f"champion of {campaign} unchanged: cell {leader} ({folder})")
            return str(folder / "card.md")
        fresh = folder.with_name(f".{CHAMPION_DIR}.new")
        shutil.rmtree(fresh, ignore_errors=True)
        card = write_champion(h, campaign, fresh, cell_id=leader, log=print)
        old = folder.with_name(f".{CHAMPION_DIR}.old")
        shutil.rmtree(old, ignore_errors=True)
        # a folder swap, not a file write (no atomic_write for folders): the package's files were
        # written whole into `fresh`; the two renames leave the old package or the new one in place
        if folder.exists():
            folder.rename(old)
        fresh.rename(folder)  # the package is whole or the previous one stays
        shutil.rmtree(old, ignore_errors=True)
        print(f"champion of {campaign}: cell {leader} (was {current.get('cell_id', 'none')}), test AP "
              f"{card['package_run']['evaluated']['test_ap']:.4f} -> {folder}")
        _publish_card(campaign, folder / "card.md")
        return str(folder / "card.md")
    except Exception as exc:  # noqa: BLE001 - the campaign's rows are recorded; the package is on top
        reraise_interrupt(exc)  # a Ctrl-C during one of its queries stops the run, as anywhere else
        print(f"could not write the champion of {campaign}: {' '.join(str(exc).split())[:200]}")
        return None


def _publish_card(campaign: str, card_md) -> None:
    """The model card as a Prefect markdown artifact of the running flow (none outside a flow run)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    key = "".join(c if c.isalnum() else "-" for c in campaign.lower()).strip("-") or "campaign"
    create_markdown_artifact(key=f"{key}-champion", markdown=card_md.read_text(),
                             description=f"Model card of campaign {campaign}'s champion detector")
