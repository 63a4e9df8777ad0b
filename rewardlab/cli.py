"""The one command, ``rewardlab``, and its subcommands.

Each subcommand parses its arguments here and calls one function of a stage; errors the user can
fix print one line (``rewardlab: ...``) and exit with status 2.
"""

from __future__ import annotations

import os

# Before torch is imported: spinning OpenMP threads collapse when other processes share the cores
# (measured: generation at 3-18 tokens/s instead of 88-96 on a busy 2-core machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import getpass
import json
import sys
from pathlib import Path

from rewardlab.errors import RewardlabError


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", type=Path, default=None,
                   help="workspace folder (default $REWARDLAB_WORKSPACE or ./rewardlab_workspace)")
    p.add_argument("--db", default=None,
                   help="SQLAlchemy URL or SQLite file (default: rewardlab.db in the workspace); "
                        "e.g. postgresql+psycopg://user@host/rewardlab")


def _workspace(args) -> Path:
    from rewardlab.workspace import default_workspace

    return (args.workspace or default_workspace()).expanduser().resolve()


def _open_store(args):
    from annotate.store import Store
    from rewardlab.workspace import db_url

    return Store(db_url(args.db, _workspace(args)))


def _print_rejected(rejected, limit: int = 20) -> None:
    for where, reason in rejected[:limit]:
        print(f"  rejected {where}: {reason}")
    if len(rejected) > limit:
        print(f"  ... and {len(rejected) - limit} more rejected rows")


# --- subcommands ----------------------------------------------------------------------------------

def cmd_prompts_import(args) -> int:
    from annotate.importing import import_prompts

    store = _open_store(args)
    r = import_prompts(store, args.path, field=args.field, skip_invalid=args.skip_invalid)
    print(f"imported {r['added']} prompts from {args.path}; {r['duplicates']} duplicates skipped; "
          f"{len(r['rejected'])} rows rejected")
    _print_rejected(r["rejected"])
    return 0


def cmd_pairs_import(args) -> int:
    from annotate.importing import import_pairs

    store = _open_store(args)
    r = import_pairs(store, args.path, skip_invalid=args.skip_invalid, name=args.name)
    print(f"imported {r['added']} labelled pairs from {args.path}; {r['duplicates']} duplicates skipped; "
          f"{len(r['rejected'])} rows rejected")
    _print_rejected(r["rejected"])
    return 0


def cmd_generate(args) -> int:
    from annotate.candidates import generate

    from rewardlab.workspace import load_config

    store = _open_store(args)
    overlap = args.overlap if args.overlap is not None else load_config(_workspace(args)).overlap
    summary = generate(
        store,
        args.model or [None],
        per_prompt=args.per_prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=args.limit,
        pairs_per_prompt=args.pairs_per_prompt,
        overlap=overlap,
    )
    print(json.dumps(summary))
    return 0


def cmd_annotate(args) -> int:
    from annotate.app import serve

    serve(
        workspace=_workspace(args),
        db=args.db,
        host=args.host,
        port=args.port,
        # The demo fills only the default workspace: a workspace or database named by the user is
        # theirs, and is never seeded with sample data.
        demo=(args.db is None and args.workspace is None and not os.environ.get("REWARDLAB_WORKSPACE")
              and not args.no_demo),
    )
    return 0


def cmd_users_add(args) -> int:
    from annotate.accounts import add_user

    store = _open_store(args)
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise RewardlabError("the two passwords differ; nothing was changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    acc = add_user(store, args.name, password, role="admin" if args.admin else "annotator")
    print(f"added {acc.role} {acc.name}")
    return 0


def cmd_users_list(args) -> int:
    from annotate.accounts import list_users

    rows = list_users(_open_store(args))
    print(f"{'name':24} {'role':10} {'active':6} labels")
    for r in rows:
        print(f"{r['name']:24} {r['role']:10} {'yes' if r['active'] else 'no':6} {r['labels']}")
    return 0


def cmd_users_disable(args) -> int:
    from annotate.accounts import disable_user

    disable_user(_open_store(args), args.name)
    print(f"disabled {args.name}; their labels are kept")
    return 0


def cmd_export(args) -> int:
    from annotate.export import export

    summary = export(_open_store(args), args.out, style=args.style, jsonl=args.jsonl, tag=args.tag)
    print(json.dumps(summary))
    return 0


def cmd_db_upgrade(args) -> int:
    from annotate.migrate import upgrade
    from rewardlab.workspace import db_url

    before, after = upgrade(db_url(args.db, _workspace(args)))
    if before == after:
        print(f"schema version {after}: already current")
    else:
        print(f"upgraded the schema from version {before if before is not None else '(empty)'} to {after}")
    return 0


def cmd_db_status(args) -> int:
    from annotate.migrate import status
    from rewardlab.workspace import db_url

    print(json.dumps(status(db_url(args.db, _workspace(args)))))
    return 0


# --- parser ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardlab",
        description="Collect human preferences, design rewards, and align language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("prompts", help="manage the prompt set")
    psub = p.add_subparsers(dest="action", metavar="ACTION")
    psub.required = True
    q = psub.add_parser("import", help="import prompts from JSONL, CSV, a datasets folder, a hub name, or HH-RLHF")
    q.add_argument("path", help="file, datasets folder, or hub dataset name (owner/name[:split])")
    q.add_argument("--field", default=None, help="column holding the prompt (default: detected)")
    q.add_argument("--skip-invalid", action="store_true", help="import the valid rows and list the rejected ones")
    _store_args(q)
    q.set_defaults(func=cmd_prompts_import)

    p = sub.add_parser("pairs", help="manage already-labelled pairs")
    psub = p.add_subparsers(dest="action", metavar="ACTION")
    psub.required = True
    q = psub.add_parser("import", help="import labelled pairs (prompt/chosen/rejected, TRL formats, HH-RLHF)")
    q.add_argument("path")
    q.add_argument("--name", default=None, help="source name recorded with the labels (default: file name)")
    q.add_argument("--skip-invalid", action="store_true")
    _store_args(q)
    q.set_defaults(func=cmd_pairs_import)

    q = sub.add_parser("generate", help="generate candidate responses and build comparisons")
    q.add_argument("--model", action="append", default=None,
                   help="model alias, local folder or hub id; repeat for several models (default smollm2-135m)")
    q.add_argument("--per-prompt", type=int, default=2, help="responses per prompt and model")
    q.add_argument("--pairs-per-prompt", type=int, default=1, help="comparisons built per prompt")
    q.add_argument("--max-new-tokens", type=int, default=128)
    q.add_argument("--temperature", type=float, nargs="+", default=[0.8],
                   help="one value for all models, or one per --model in order")
    q.add_argument("--top-p", type=float, nargs="+", default=[0.95],
                   help="one value for all models, or one per --model in order")
    q.add_argument("--batch-size", type=int, default=64, help="sequences generated together")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--limit", type=int, default=None, help="at most this many prompts (those without responses first)")
    q.add_argument("--overlap", type=int, default=None,
                   help="labels each new comparison collects (default: the workspace's overlap)")
    _store_args(q)
    q.set_defaults(func=cmd_generate)

    q = sub.add_parser("annotate", help="start the annotation web app")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=7860)
    q.add_argument("--no-demo", action="store_true",
                   help="do not fill the default workspace with the sample prompts, pairs and admin account")
    _store_args(q)
    q.set_defaults(func=cmd_annotate)

    p = sub.add_parser("users", help="manage annotator accounts")
    usub = p.add_subparsers(dest="action", metavar="ACTION")
    usub.required = True
    q = usub.add_parser("add", help="add an account (password from a prompt, or one line of stdin)")
    q.add_argument("name")
    q.add_argument("--admin", action="store_true", help="may see progress and agreement of everyone")
    _store_args(q)
    q.set_defaults(func=cmd_users_add)
    q = usub.add_parser("list", help="list accounts")
    _store_args(q)
    q.set_defaults(func=cmd_users_list)
    q = usub.add_parser("disable", help="disable an account (labels are kept)")
    q.add_argument("name")
    _store_args(q)
    q.set_defaults(func=cmd_users_disable)

    p = sub.add_parser("db", help="the database schema: status and upgrades (migrations)")
    dsub = p.add_subparsers(dest="action", metavar="ACTION")
    dsub.required = True
    q = dsub.add_parser("upgrade", help="bring the schema to this rewardlab's version (back the database up first)")
    _store_args(q)
    q.set_defaults(func=cmd_db_upgrade)
    q = dsub.add_parser("status", help="print the database's schema version and this rewardlab's, as JSON")
    _store_args(q)
    q.set_defaults(func=cmd_db_status)

    q = sub.add_parser("export", help="export labels as a TRL preference dataset, with agreement")
    q.add_argument("--out", required=True, type=Path, help="output folder (a datasets save_to_disk folder)")
    q.add_argument("--style", default="auto", choices=["auto", "explicit", "implicit", "conversational"],
                   help="TRL preference format (auto: conversational when any prompt is multi-turn)")
    q.add_argument("--jsonl", action="store_true", help="also write preferences.jsonl")
    q.add_argument("--tag", default=None, help="only comparisons with this tag (e.g. generate, import:hh)")
    _store_args(q)
    q.set_defaults(func=cmd_export)

    # Later stages register their own subcommands (imports stay light: no torch until run).
    from reward_models.commands import register as register_reward
    from train.commands import register as register_ppo
    from train.eval_commands import register as register_evaluate

    register_reward(sub)
    register_ppo(sub)
    register_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except RewardlabError as exc:
        print(f"rewardlab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rewardlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
