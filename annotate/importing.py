"""Bring outside data into the store: prompt sets, and pairs that were already labelled elsewhere.

Each import is one transaction: a bad row stops it before anything is written (or, with
``skip_invalid``, the bad rows are listed and the good ones imported).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from annotate.accounts import import_account
from annotate.store import STRENGTH_MARGIN, Comparison, Label, Store, utcnow
from rewardlab.errors import RewardlabError
from rewardlab.formats import load_preferences, load_prompts


def source_name(source: str) -> str:
    """A short name for where data came from: the file name without extension, or the hub id."""
    p = Path(source)
    return p.stem if p.suffix else p.name or source


def import_prompts(store: Store, source: str, field: str | None = None, skip_invalid: bool = False) -> dict:
    result = load_prompts(source, field=field, skip_invalid=skip_invalid)
    if not result.records and not result.rejected:
        raise RewardlabError(f"{source}: no prompts found")
    added, dup = store.add_prompts(result.records, source=source_name(source))
    return {"added": added, "duplicates": dup, "rejected": result.rejected}


def import_pairs(store: Store, source: str, skip_invalid: bool = False, name: str | None = None) -> dict:
    """Import labelled pairs (prompt, chosen, rejected) as comparisons that already have their label.

    The label belongs to the inactive account ``import:<name>``; the comparison is complete
    (overlap 1), so it is exported with the rest but never shown to annotators.
    """
    result = load_preferences(source, skip_invalid=skip_invalid)
    if not result.records and not result.rejected:
        raise RewardlabError(f"{source}: no preference pairs found")
    name = name or source_name(source)
    model = f"import:{name}"
    added = dup = 0
    now = utcnow()
    from rewardlab.formats import PromptRecord

    with store.write() as s:
        annotator_id = import_account(store, s, name)
        for rec in result.records:
            prompt = PromptRecord(messages=rec.prompt, source=name)
            pid = store.prompt_id_for(s, prompt, source=name)
            rid_chosen = store.response_id_for(s, pid, model, rec.chosen)
            rid_rejected = store.response_id_for(s, pid, model, rec.rejected)
            cid, created, flipped = store.comparison_for(s, pid, rid_chosen, rid_rejected, overlap=1, tag=model)
            if not created:
                dup += 1
                continue
            strength = None
            if rec.margin is not None:
                strength = "clear" if rec.margin >= STRENGTH_MARGIN["clear"] else "slight"
            s.add(
                Label(
                    comparison_id=cid,
                    annotator_id=annotator_id,
                    choice="B" if flipped else "A",
                    strength=strength,
                    note="",
                    seconds=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            s.execute(update(Comparison).where(Comparison.id == cid).values(label_count=1))
            added += 1
    return {"added": added, "duplicates": dup, "rejected": result.rejected}
