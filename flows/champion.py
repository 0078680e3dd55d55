"""The nightly champion: the nightly flow packages a campaign's leader as a detector (tasks/champion.py)
when it changed. ``crashsearch champion`` packages one on demand (flows/commands/champion.py)."""
from __future__ import annotations

from crashsearch.lab.lock import reraise_interrupt

CHAMPION_DIR = "champion"  # campaigns/<id>/champion/ in the home: the nightly package (the report links its card)


def nightly_champion(home, campaign: str) -> str | None:
    """Write the home's ``campaigns/<id>/champion/`` when the leader changed since the last package, and
    publish its card as a Prefect markdown artifact; returns where its card is (None: no leader).
    Never fails the flow: a failure is one line.

    A local home gets the package as a folder, swapped whole by two renames. An object-store home
    has no rename: the package is built in this machine's scratch folder (kept there: the local
    report links it) and put on the bucket with its card.json last (tasks.champion.publish_package),
    where every machine of the pool, and ``predict --model s3://...``, finds it."""
    import shutil

    from crashsearch.lab.logfiles import campaign_key, read_object
    from crashsearch.lab.settings import Home, resolve_home
    from crashsearch.lab.storage import backend_for
    from crashsearch.tasks.champion import leader_cell, publish_package, write_champion

    h = home if isinstance(home, Home) else resolve_home(home)
    backend = backend_for(h.location)
    prefix = campaign_key(campaign, CHAMPION_DIR)
    folder = h.campaign(campaign) / CHAMPION_DIR  # the package of a local home; an object store's local copy
    card_at = backend.url(f"{prefix}/card.md")
    try:
        leader = leader_cell(h, campaign)
        if leader is None:
            return None
        current = read_object(backend, f"{prefix}/card.json") or {}  # the home's package, wherever it was built
        if current.get("cell_id") == leader:
            print(f"champion of {campaign} unchanged: cell {leader} ({backend.url(prefix)})")
            return card_at
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
        if h.url:
            publish_package(folder, backend, prefix)
        print(f"champion of {campaign}: cell {leader} (was {current.get('cell_id', 'none')}), test AP "
              f"{card['package_run']['evaluated']['test_ap']:.4f} -> {backend.url(prefix)}")
        _publish_card(campaign, folder / "card.md")
        return card_at
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
