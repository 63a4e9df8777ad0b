"""Labels -> a preference dataset that TRL's RewardTrainer loads as it is, with agreement.

Each labelled comparison becomes at most one row. Its labels (canonical: ``A`` means response_a)
are aggregated by strict majority: more than half say ``A`` (or ``B``) and that response is
``chosen``; otherwise the pair is dropped and counted as a tie, as both bad (more than half said
so), or as a disagreement (no strict majority at all). ``margin`` is the mean of the majority's
strengths through ``STRENGTH_MARGIN`` (slight 0.5, clear 1.0), which RewardTrainer subtracts
inside its loss.

The output folder::

    <out>/                     a `datasets.save_to_disk` folder (prompt, chosen, rejected, margin)
        preferences.jsonl      the same rows as JSON lines (with --jsonl)
        agreement.json         agreement_report() of the same labels (same snapshot)
        export.json            the summary export() returns: counts, style, tag, time, agreement

It is built in a temporary folder beside ``<out>`` and renamed into place only when complete, so
an error never leaves a half-written export and an earlier export is replaced only by a whole one.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import aliased

from annotate import gold
from annotate.agreement import report_from_labels
from annotate.store import STRENGTH_MARGIN, Annotator, Comparison, Label, Prompt, Response, Store
from rewardlab.errors import RewardlabError
from rewardlab.formats import PreferenceRecord, to_trl_dataset, to_trl_rows, write_jsonl


def aggregate(labels: list[tuple[str, str | None]]) -> tuple[str, float | None]:
    """One comparison's verdict from its (choice, strength) labels.

    Returns ("A" | "B", margin) for a strict majority for one response, else ("tie" |
    "both_bad" | "disagreement", None).
    """
    counts = Counter(choice for choice, _ in labels)
    for verdict in ("A", "B", "tie", "both_bad"):
        if counts[verdict] * 2 > len(labels):
            if verdict in ("A", "B"):
                margins = [STRENGTH_MARGIN[strength] for choice, strength in labels if choice == verdict]
                return verdict, sum(margins) / len(margins)
            return verdict, None
    return "disagreement", None


def _collect(store: Store, tag: str | None):
    """(records, counts, agreement report) for every labelled comparison (with ``tag`` when given),
    all read in one snapshot."""
    ra, rb = aliased(Response), aliased(Response)
    labels_q = (
        select(Label.comparison_id, Annotator.name, Label.choice, Label.strength)
        .join(Annotator, Annotator.id == Label.annotator_id)
        .order_by(Label.comparison_id)
    )
    pairs_q = (
        select(Comparison.id, Comparison.tag, Prompt.messages, Prompt.source, ra.text, rb.text, ra.model, rb.model)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .join(ra, ra.id == Comparison.response_a_id)
        .join(rb, rb.id == Comparison.response_b_id)
        .where(Comparison.label_count > 0)
        .order_by(Comparison.id)
    )
    unlabelled_q = select(func.count()).select_from(Comparison).where(
        Comparison.label_count == 0, Comparison.overlap > 0)  # overlap 0: gold pairs (issue 7), never labels
    if tag is not None:
        labels_q = labels_q.join(Comparison, Comparison.id == Label.comparison_id).where(Comparison.tag == tag)
        pairs_q = pairs_q.where(Comparison.tag == tag)
        unlabelled_q = unlabelled_q.where(Comparison.tag == tag)

    with store.read() as s:  # one snapshot for all three queries
        label_rows = s.execute(labels_q).all()
        pairs = s.execute(pairs_q).all()
        unlabelled = int(s.scalar(unlabelled_q) or 0)
    by_pair: dict[int, list[tuple[str, str | None]]] = defaultdict(list)
    for cid, _, choice, strength in label_rows:
        by_pair[cid].append((choice, strength))
    agreement = report_from_labels((cid, name, choice) for cid, name, choice, _ in label_rows)

    counts = Counter(
        pairs_exported=0, dropped_tie=0, dropped_both_bad=0, dropped_disagreement=0,
    )
    records: list[PreferenceRecord] = []
    n_labels = 0
    for cid, ctag, messages, source, text_a, text_b, model_a, model_b in pairs:
        labels = by_pair.get(cid)
        if not labels:
            continue
        n_labels += len(labels)
        verdict, margin = aggregate(labels)
        if verdict not in ("A", "B"):
            counts[f"dropped_{verdict}"] += 1
            continue
        chosen, rejected = (text_a, text_b) if verdict == "A" else (text_b, text_a)
        chosen_model, rejected_model = (model_a, model_b) if verdict == "A" else (model_b, model_a)
        counts["pairs_exported"] += 1
        records.append(
            PreferenceRecord(
                prompt=json.loads(messages),
                chosen=chosen,
                rejected=rejected,
                margin=margin,
                meta={
                    "comparison_id": cid,
                    "tag": ctag,
                    "source": source,
                    "n_labels": len(labels),
                    "chosen_model": chosen_model,
                    "rejected_model": rejected_model,
                },
            )
        )
    counts["comparisons_unlabelled"] = unlabelled
    counts["labels"] = n_labels
    return records, dict(counts), agreement


def export(store: Store, out_dir, *, style: str = "auto", jsonl: bool = False, tag: str | None = None) -> dict:
    """Write the preference dataset of all labelled comparisons to ``out_dir``; return the summary."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise RewardlabError(f"--out {out_dir} is a file; give a folder path for the export")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "export.json").is_file():
        raise RewardlabError(
            f"--out {out_dir} exists and is not an earlier rewardlab export; "
            "choose a new folder (an earlier export there would be replaced)"
        )

    records, counts, agreement = _collect(store, tag)
    where = f" with tag {tag!r}" if tag is not None else ""
    if counts["labels"] == 0:
        raise RewardlabError(
            f"no labelled pairs to export{where} in {_shown_url(store.url)}: label some pairs in "
            "`rewardlab annotate` or import labelled ones with `rewardlab pairs import`"
        )
    if not records:
        dropped = counts["dropped_tie"] + counts["dropped_both_bad"] + counts["dropped_disagreement"]
        raise RewardlabError(
            f"no labelled pairs to export{where}: all {dropped} labelled pairs were dropped as ties "
            f"({counts['dropped_tie']}), both bad ({counts['dropped_both_bad']}) or disagreements "
            f"({counts['dropped_disagreement']}); collect more labels"
        )

    dataset = to_trl_dataset(records, style=style)
    summary = {
        **counts,
        "style": _style_of(dataset, style),
        "tag": tag,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "agreement": agreement["overall"],
    }

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_to_disk(str(tmp))
        if jsonl:
            write_jsonl(tmp / "preferences.jsonl", to_trl_rows(records, style=summary["style"]))
        gold_scores = gold.scores(store)  # issue 7: annotators' quality scores on gold pairs, when any
        _write_json(tmp / "agreement.json", {**agreement, "gold": gold_scores} if gold_scores else agreement)
        _write_json(tmp / "export.json", summary)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    except OSError as exc:
        if old.exists() and not out_dir.exists():
            old.rename(out_dir)  # put the earlier export back
        raise RewardlabError(f"cannot write the export to {out_dir}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return summary


def _style_of(dataset, requested: str) -> str:
    """The style actually written: ``requested`` unless it was auto."""
    if requested != "auto":
        return requested
    return "conversational" if isinstance(dataset[0]["chosen"], list) else "explicit"


def _shown_url(url: str) -> str:
    """The database URL without its password, fit for an error message."""
    return make_url(url).render_as_string(hide_password=True)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
