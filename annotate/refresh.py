"""The background refresh: every K new labels, refit the cheap reward heads and re-rank the queue.

Runs in a daemon thread of the app process; ``next_pair`` never waits for it. One refresh:

1. read (short read transaction) the open comparisons, the A/B labels so far and the cached
   features (``response_features``) of every reply involved;
2. featurize the replies not cached yet (``featurize``: (messages, reply) list -> feature rows; the
   app passes ``reward_models.active.Featurizer``) and store them, so each reply is encoded once;
3. outside any transaction: ``ranker`` fits the heads on the labels and returns one priority per open
   comparison (``reward_models.active.priorities``; ``None``: no model yet, keep today's order);
4. write the priorities in small transactions (``CHUNK`` rows), so a write never holds the
   database for long.

Ties and "both bad" labels carry no preference and are left out of the fit. With several app
processes on one database each runs its own refresher; they write the same priorities.
"""

from __future__ import annotations

import json
import threading
import time

import torch
from sqlalchemy import delete, func, insert, select

from annotate.store import (
    Comparison,
    Label,
    PairPriority,
    Prompt,
    Response,
    ResponseFeature,
    Store,
    utcnow,
)

CHUNK = 500


def _to_bytes(row: torch.Tensor) -> bytes:
    return row.float().contiguous().numpy().tobytes()


def _from_bytes(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.float32)


class Refresher:
    """Re-rank ``store``'s open comparisons for ``strategy`` every ``every`` new labels."""

    def __init__(self, store: Store, strategy: str, ranker, featurize, featurizer_name: str, every: int = 20,
                 poll_seconds: float = 2.0):
        self.store, self.strategy, self.ranker = store, strategy, ranker
        self.featurize, self.featurizer_name = featurize, featurizer_name
        self.every, self.poll_seconds = every, poll_seconds
        self.refreshes = 0
        self.last: dict = {}
        self.error: str | None = None
        self._labels_at_last: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the thread ----------------------------------------------------------------------------

    def start(self) -> Refresher:
        self._thread = threading.Thread(target=self._loop, name="rewardlab-refresh", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.maybe_refresh()
                self.error = None
            except Exception as exc:  # keep serving with the last priorities; show why in the stats
                self.error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(self.poll_seconds)

    def label_count(self) -> int:
        with self.store.read() as s:
            return int(s.scalar(select(func.count()).select_from(Label)) or 0)

    def maybe_refresh(self) -> bool:
        """Refresh when ``every`` labels arrived since the last refresh (or none ran yet)."""
        n = self.label_count()
        if self._labels_at_last is not None and n - self._labels_at_last < self.every:
            return False
        self.refresh()
        self._labels_at_last = n
        return True

    # --- one refresh ---------------------------------------------------------------------------

    def refresh(self) -> dict:
        started = time.perf_counter()
        with self.store.read() as s:
            open_rows = s.execute(
                select(Comparison.id, Comparison.prompt_id, Comparison.response_a_id, Comparison.response_b_id)
                .where(Comparison.label_count < Comparison.overlap)
                .order_by(Comparison.id)
            ).all()
            label_rows = s.execute(
                select(Comparison.prompt_id, Comparison.response_a_id, Comparison.response_b_id, Label.choice)
                .join(Label, Label.comparison_id == Comparison.id)
                .where(Label.choice.in_(("A", "B")))
            ).all()
        needed = {r for row in open_rows for r in row[2:]} | {r for row in label_rows for r in row[1:3]}
        feats = self._features(needed)
        chosen = [feats[a if c == "A" else b] for _p, a, b, c in label_rows]
        rejected = [feats[b if c == "A" else a] for _p, a, b, c in label_rows]
        per_prompt: dict = {}
        for p, *_ in label_rows:
            per_prompt[p] = per_prompt.get(p, 0) + 1
        dim = next(iter(feats.values())).numel() if feats else 0
        stack = (lambda rows: torch.stack(rows) if rows else torch.zeros((0, dim)))
        priority = None
        if open_rows:
            priority = self.ranker(self.strategy, stack(chosen), stack(rejected),
                                   stack([feats[r[2]] for r in open_rows]), stack([feats[r[3]] for r in open_rows]),
                                   [r[1] for r in open_rows], per_prompt)
        written = self._write([r[0] for r in open_rows], priority)
        self.refreshes += 1
        self.last = {"strategy": self.strategy, "labels": len(label_rows), "open": len(open_rows),
                     "ranked": written, "seconds": round(time.perf_counter() - started, 3), "at": str(utcnow())}
        return self.last

    def _features(self, response_ids: set[int]) -> dict[int, torch.Tensor]:
        ids = sorted(response_ids)
        out: dict[int, torch.Tensor] = {}
        with self.store.read() as s:
            for lo in range(0, len(ids), CHUNK):
                for rid, blob in s.execute(
                    select(ResponseFeature.response_id, ResponseFeature.vector).where(
                        ResponseFeature.featurizer == self.featurizer_name,
                        ResponseFeature.response_id.in_(ids[lo: lo + CHUNK]),
                    )
                ):
                    out[rid] = _from_bytes(blob)
            missing = [r for r in ids if r not in out]
            items = []
            for lo in range(0, len(missing), CHUNK):
                items += s.execute(
                    select(Response.id, Prompt.messages, Response.text)
                    .join(Prompt, Prompt.id == Response.prompt_id)
                    .where(Response.id.in_(missing[lo: lo + CHUNK]))
                ).all()
        for lo in range(0, len(items), CHUNK):  # encode and store in chunks: progress survives a stop
            part = items[lo: lo + CHUNK]
            rows = self.featurize([(json.loads(m), text) for _rid, m, text in part])
            with self.store.write() as s:
                s.execute(insert(ResponseFeature), [
                    {"response_id": rid, "featurizer": self.featurizer_name, "vector": _to_bytes(row)}
                    for (rid, _m, _t), row in zip(part, rows)
                ])
            for (rid, _m, _t), row in zip(part, rows):
                out[rid] = row.float()
        return out

    def _write(self, comparison_ids: list[int], priority) -> int:
        """Replace the stored priorities (none at all when ``priority`` is None), a chunk at a time."""
        if priority is None:
            with self.store.write() as s:
                s.execute(delete(PairPriority))
            return 0
        now = utcnow()
        with self.store.write() as s:  # priorities of comparisons no longer open
            s.execute(delete(PairPriority).where(PairPriority.comparison_id.not_in(
                select(Comparison.id).where(Comparison.label_count < Comparison.overlap))))
        for lo in range(0, len(comparison_ids), CHUNK):
            chunk = comparison_ids[lo: lo + CHUNK]
            with self.store.write() as s:
                s.execute(delete(PairPriority).where(PairPriority.comparison_id.in_(chunk)))
                s.execute(insert(PairPriority), [
                    {"comparison_id": cid, "priority": float(priority[lo + i]), "strategy": self.strategy,
                     "refreshed_at": now} for i, cid in enumerate(chunk)
                ])
        return len(comparison_ids)
