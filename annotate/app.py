"""The annotation web app (Gradio Blocks): log in, compare two responses, pick the better one.

Start it with ``rewardlab annotate`` (see ``serve``). Everything, the page and the API alike,
sits behind the login of the workspace's accounts (``rewardlab users add NAME [--admin]``).

The page shows the guidelines, the prompt (a conversation when it has several turns) and the two
responses side by side, always as literal text: HTML or script inside a model's output is
displayed, never run. Keys: ``1`` A is better, ``2`` B is better, ``3`` tie, ``4`` both bad,
``s`` skip, ``u`` undo the last label. Strength (slight / clear) and a note are optional. Admins
get an *Admin* tab with each annotator's progress, speed, label distribution and agreement;
annotators never see anyone else's labels. Admins also get the console tabs (data, reward model,
PPO, evaluation, reward design, jobs): ``annotate/console_ui.py`` and docs/admin.md, which lists
its own API endpoints (``/console_*``, admins only).

Scripting API (the same login; ``gradio_client.Client(url, auth=(name, password))`` then
``client.predict(..., api_name="/next_pair")``). A and B are always *as shown to you*: the order
is random per annotator and labels are stored canonically. A pair is a dict
``{"comparison_id", "prompt", "messages", "response_a", "response_b", "progress"}`` where
``prompt`` is the conversation as one text, ``messages`` the turns (``role``, ``content``) and
``progress`` is ``{"done", "remaining"}``; ``None`` means nothing is left for you.

- ``/next_pair()`` -> pair | None: your current pair (the same one until you label or skip it).
- ``/submit_label(comparison_id: int, choice: str, strength: str | None, note: str)`` -> pair |
  None: store your label (choice ``A`` | ``B`` | ``tie`` | ``both_bad``; strength ``slight`` |
  ``clear`` | None; note up to 2000 characters) and get the next pair. If others filled the pair
  first, nothing is stored and the next pair comes back all the same.
- ``/skip(comparison_id: int)`` -> pair | None: never show this pair to you again; the next pair.
- ``/undo()`` -> pair | None: take back your latest label; returns that pair, current again.
- ``/progress()`` -> ``{"done", "remaining"}``.
- ``/admin_stats()`` -> dict (admins only): ``annotators`` (per account: labels, median seconds
  per label, choices as shown), ``comparisons`` (total, complete, labels) and ``agreement``
  (``annotate.agreement.agreement_report``).

Errors (bad input, a pair not shown to you) come back as ``gradio_client`` ``AppError`` with a
message saying what to do.

Without gradio_client: ``POST /login`` (form fields ``username``, ``password``), keep the cookie,
then ``POST /gradio_api/run/<endpoint>`` with JSON ``{"data": [arguments in order]}``; the answer
is ``{"data": [result], ...}``, or HTTP 500 with ``{"error": message}``. This skips the queue and
is the quickest path (a few ms on top of the handler; gradio_client adds ~80 ms per call).
"""

import gc
import html
import os
import statistics
from pathlib import Path

import gradio as gr
from sqlalchemy import and_, func, select

from annotate import accounts, assignment, gold, security
from annotate.accounts import Account
from annotate.agreement import agreement_report
from annotate.store import CHOICES, STRENGTHS, Annotator, Assignment, Comparison, Label, Store
from rewardlab.errors import RewardlabError
from rewardlab.workspace import WorkspaceConfig, db_url, load_config

# Every handler is a few short SQLite transactions (the store serializes writes itself), so the
# queue may run them all at once: Gradio's default limit of 1 per event would make 32 annotators
# wait in line behind each other. Threads are bounded by launch(max_threads=40).
CONCURRENCY_LIMIT = None
_env_limit = os.environ.get("REWARDLAB_CONCURRENCY", "").strip()
if _env_limit:  # "none" (default), "default" (Gradio's 1 per event) or a number of calls at once
    CONCURRENCY_LIMIT = None if _env_limit == "none" else _env_limit if _env_limit == "default" else int(_env_limit)

# Gradio's queue keeps a record of the last 10,000 events and, after EVERY event, rebuilds a pandas
# DataFrame over all of them for its /monitoring page (GRADIO_ANALYTICS_CACHE_FREQUENCY=1): at 30
# labels/s that was the largest single CPU cost per call after a minute (py-spy; docs/benchmarks.md).
# rewardlab turns the monitoring page off (launch_kwargs) and, unless the operator set them, keeps
# few records and refreshes that summary rarely. Read when the queue is made (gr.Blocks()).
QUEUE_ANALYTICS_ENV = {"GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000000", "GRADIO_ANALYTICS_MAX_EVENTS": "100"}
ENABLE_MONITORING = False

BUTTONS = [  # (label, elem_id, choice or action, key)
    ("A is better (1)", "rl-a", "A", "1"),
    ("B is better (2)", "rl-b", "B", "2"),
    ("Tie (3)", "rl-tie", "tie", "3"),
    ("Both bad (4)", "rl-both-bad", "both_bad", "4"),
    ("Skip (s)", "rl-skip", "skip", "s"),
    ("Undo (u)", "rl-undo", "undo", "u"),
]
CHOICE_NAMES = {"A": "A is better", "B": "B is better", "tie": "tie", "both_bad": "both bad"}

_KEYS_JS = ", ".join(f'"{key}": "{elem_id}"' for _, elem_id, _, key in BUTTONS)
HEAD = """<script>
(function () {
  const KEYS = {%s};
  const TEXT_INPUTS = ["text", "search", "email", "url", "password", "number", "tel"];
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.shiftKey || e.repeat || e.isComposing) return;
    const t = e.target;
    if (t && t.isContentEditable) return;
    if (t && t.tagName === "TEXTAREA" && !t.readOnly && !t.disabled) return;
    if (t && t.tagName === "INPUT" && TEXT_INPUTS.includes((t.type || "text").toLowerCase())) return;
    if (t && t.tagName === "SELECT") return;
    const id = KEYS[e.key.toLowerCase()];
    if (!id) return;
    const el = document.getElementById(id);
    const button = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (!button || button.disabled || button.offsetParent === null) return;
    e.preventDefault();
    button.click();
  });
})();
</script>""" % _KEYS_JS

CSS = """
#rl-buttons button { min-width: 0; }
#rl-status { min-height: 1.5em; }
#rl-done { text-align: center; padding: 2em 0; }
#rl-prompt button[aria-label="Clear"] { display: none; }  /* the prompt is not the user's to clear */
"""


# --- who is asking ------------------------------------------------------------------------------

def _error(message: str) -> gr.Error:
    """An error for the client (AppError in gradio_client, a toast on the page), no server traceback."""
    return gr.Error(message, print_exception=False)


def _user(store: Store, request: gr.Request | None) -> Account:
    """The active account behind a request; gr.Error when there is none (never trust the page)."""
    name = getattr(request, "username", None) if request is not None else None
    if not name:
        raise _error("not logged in: sign in first")
    account = accounts.get_account(store, name)
    if account is None:
        raise _error(f"account {name!r} is disabled or unknown; ask an admin")
    return account


def _admin(store: Store, request: gr.Request | None) -> Account:
    account = _user(store, request)
    if not account.is_admin:
        raise _error("admins only")
    return account


# --- input checks (gr.api converts nothing) -------------------------------------------------------

def _comparison_id(value) -> int:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise _error(f"comparison_id must be a whole number, got {value!r}")
    return int(value)


def _choice(value) -> str:
    if value not in CHOICES:
        raise _error(f"choice must be one of {', '.join(CHOICES)} (as shown to you), got {value!r}")
    return value


def _strength(value) -> str | None:
    if value in (None, ""):
        return None
    if value not in STRENGTHS:
        raise _error(f"strength must be one of {', '.join(STRENGTHS)} or null, got {value!r}")
    return value


def _note(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > assignment.MAX_NOTE_CHARS:
        raise _error(f"note must be text of at most {assignment.MAX_NOTE_CHARS} characters")
    return value


# --- admin figures --------------------------------------------------------------------------------

def admin_stats(store: Store) -> dict:
    """Per-annotator progress, speed and choices (A/B as shown: left/right), and agreement."""
    with store.read() as s:
        people = s.execute(
            select(Annotator.id, Annotator.name, Annotator.role, Annotator.active).order_by(Annotator.name)
        ).all()
        labels = s.execute(
            select(Label.annotator_id, Label.choice, Label.seconds, Assignment.swapped).outerjoin(
                Assignment,
                and_(Assignment.comparison_id == Label.comparison_id, Assignment.annotator_id == Label.annotator_id),
            )
        ).all()
        total, complete, n_labels = s.execute(
            select(
                func.count(),
                func.coalesce(func.sum((Comparison.label_count >= Comparison.overlap).cast(Comparison.overlap.type)), 0),
                func.coalesce(func.sum(Comparison.label_count), 0),
            ).select_from(Comparison)
        ).one()
    swap = {"A": "B", "B": "A", "tie": "tie", "both_bad": "both_bad"}
    seconds: dict[int, list[float]] = {}
    shown: dict[int, dict[str, int]] = {}
    for annotator_id, choice, secs, swapped in labels:
        counts = shown.setdefault(annotator_id, dict.fromkeys(CHOICES, 0))
        counts[swap[choice] if swapped else choice] += 1
        if secs is not None:
            seconds.setdefault(annotator_id, []).append(secs)
    report = agreement_report(store)
    gold_scores = gold.scores(store)  # issue 7: share of gold control pairs answered right
    rows = []
    for aid, name, role, active in people:
        counts = shown.get(aid, dict.fromkeys(CHOICES, 0))
        if not active and not sum(counts.values()):
            continue
        times = seconds.get(aid)
        agree = report.get("per_annotator", {}).get(name, {})
        rows.append({
            "name": name,
            "role": role,
            "active": bool(active),
            "labels": sum(counts.values()),
            "median_seconds": round(statistics.median(times), 1) if times else None,
            "choices": counts,
            "percent_agreement": agree.get("percent_agreement"),
            "n_shared": agree.get("n_shared", 0),
            **gold_scores.get(name, {"gold_answered": 0, "gold_correct": 0, "gold_accuracy": None}),
        })
    return {
        "annotators": rows,
        "comparisons": {"total": int(total), "complete": int(complete), "labels": int(n_labels)},
        "agreement": report,
    }


ADMIN_HEADERS = ["annotator", "role", "labels", "median s/label", "A (left)", "B (right)", "tie",
                 "both bad", "agreement %", "shared items", "gold correct %"]


def _admin_view(stats: dict) -> tuple[str, list[list]]:
    c, overall = stats["comparisons"], stats["agreement"].get("overall", {})

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}%"

    alpha, agree = overall.get("krippendorff_alpha"), overall.get("percent_agreement")
    if agree is None:
        agreement = "n/a until a pair has labels from two annotators (set `overlap: 2` or more)"
    else:
        agreement = (f"{pct(agree)} of label pairs match · Krippendorff's α "
                     f"{'–' if alpha is None else f'{alpha:.3f}'} · {overall.get('n_items', 0)} items with 2+ labels")
    summary = (f"**Comparisons** {c['total']} · complete {c['complete']} · labels {c['labels']}  \n"
               f"**Agreement** {agreement}")
    rows = [
        [r["name"] + ("" if r["active"] else " (disabled)"), r["role"], r["labels"],
         "–" if r["median_seconds"] is None else r["median_seconds"],
         r["choices"]["A"], r["choices"]["B"], r["choices"]["tie"], r["choices"]["both_bad"],
         pct(r["percent_agreement"]), r["n_shared"],
         f"{pct(r['gold_accuracy'])} of {r['gold_answered']}" if r["gold_answered"] else "–"]
        for r in stats["annotators"]
    ]
    return summary, rows


# --- label efficiency (issue 7; docs/active_learning.md) ------------------------------------------

def start_label_efficiency(store: Store, config: WorkspaceConfig, workspace: Path):
    """Gold pairs and the assignment strategy from workspace.yaml; the background refresher (or None)."""
    from annotate import strategies
    from annotate.refresh import Refresher

    if config.gold_file:
        path = Path(config.gold_file).expanduser()
        gold.import_gold(store, str(path if path.is_absolute() else Path(workspace) / path))
    strategies.set_policy(store, strategies.Policy(config.assignment_strategy, float(config.gold_rate)))
    if config.assignment_strategy == "random":
        return None
    from reward_models.active import Featurizer, featurizer_name, priorities

    loaded: list = []

    def featurize(items):  # the backbone loads in the refresher's thread, on first need
        if not loaded:
            loaded.append(Featurizer(config.active_backbone))
        return loaded[0](items)

    def ranker(*args):
        return priorities(*args, ensemble=config.ensemble_size)

    return Refresher(store, config.assignment_strategy, ranker, featurize, featurizer_name(config.active_backbone),
                     every=config.refresh_every).start()


# --- the app --------------------------------------------------------------------------------------

def _chat(messages: list[dict]) -> list[dict]:
    """Prompt turns for gr.Chatbot, shown literally: it renders HTML (sanitized) even without
    Markdown, so the text is escaped; Markdown is off so `code` and # stay as typed."""
    out = []
    for m in messages:
        role, content = m.get("role"), str(m.get("content", ""))
        if role not in ("user", "assistant"):
            role, content = "user", f"{str(role).capitalize()}: {content}"
        out.append({"role": role, "content": html.escape(content)})
    return out


def build_app(store: Store, config: WorkspaceConfig, workspace: Path | None = None) -> gr.Blocks:
    """The Blocks app over one shared store. Launch it with ``**launch_kwargs(store)``.

    ``workspace``: the folder the admin console works in (paths in its forms are confined to it);
    default: the SQLite database's folder, else ``$REWARDLAB_WORKSPACE`` or ./rewardlab_workspace.
    """
    from annotate import console_ui

    lease = float(config.lease_minutes)
    workspace = Path(workspace) if workspace is not None else _default_workspace(store)
    start_label_efficiency(store, config, workspace)

    def with_progress(pair: dict | None, user: Account) -> dict | None:
        if pair is not None:
            pair["progress"] = assignment.progress(store, user)
        return pair

    # --- the API: plain functions, every parameter and return annotated (gr.api needs it) ---

    def next_pair(request: gr.Request) -> dict | None:
        """Your current pair (A/B as shown to you), or None when nothing is left for you."""
        user = _user(store, request)
        return with_progress(assignment.next_pair(store, user, lease), user)

    def submit_label(comparison_id: int, choice: str, strength: str | None, note: str,
                     request: gr.Request) -> dict | None:
        """Store your label for the pair you were shown, then return your next pair."""
        user = _user(store, request)
        cid, choice = _comparison_id(comparison_id), _choice(choice)
        strength, note = _strength(strength), _note(note)
        try:  # one transaction; if others filled the pair first nothing is stored and we move on
            _stored, pair = assignment.submit_and_next(store, user, cid, choice, strength, note, lease)
        except RewardlabError as exc:
            raise _error(str(exc)) from None
        return pair

    def skip(comparison_id: int, request: gr.Request) -> dict | None:
        """Never show this pair to you again; return your next pair."""
        user = _user(store, request)
        try:
            assignment.skip(store, user, _comparison_id(comparison_id))
        except RewardlabError as exc:
            raise _error(str(exc)) from None
        return with_progress(assignment.next_pair(store, user, lease), user)

    def undo(request: gr.Request) -> dict | None:
        """Take back your latest label; returns that pair (current again), or None."""
        user = _user(store, request)
        return with_progress(assignment.undo(store, user, lease), user)

    def progress(request: gr.Request) -> dict:
        """How many pairs you labelled and how many are still open to you."""
        return assignment.progress(store, _user(store, request))

    def admin_stats_api(request: gr.Request) -> dict:
        """Admins only: per-annotator progress, speed, choices, and agreement."""
        _admin(store, request)
        return admin_stats(store)

    # --- the page ---

    def view(pair: dict | None, user: Account, status: str = "") -> list:
        """Values for OUTPUTS: the pair (or the end), progress, status, reset strength and note."""
        p = pair["progress"] if pair is not None else assignment.progress(store, user)
        has = pair is not None
        return [
            pair["comparison_id"] if has else None,
            _chat(pair["messages"]) if has else [],
            pair["response_a"] if has else "",
            pair["response_b"] if has else "",
            f"done {p['done']} · remaining {p['remaining']}",
            html.escape(status),
            gr.Radio(value=None),
            gr.Textbox(value=""),
            gr.Column(visible=has),
            gr.Markdown(visible=not has),
            *[gr.Button(interactive=has) for _ in BUTTONS[:5]],
        ]

    def ui_load(request: gr.Request):
        user = _user(store, request)
        pair = with_progress(assignment.next_pair(store, user, lease), user)
        who = f"Signed in as **{html.escape(user.name)}**" + (" (admin)" if user.is_admin else "")
        if user.is_admin:
            admin = [gr.Tab(visible=True), *ui_admin_tables()]
        else:
            admin = [gr.Tab(visible=False), "", [], [], []]
        return [*view(pair, user), who, *admin, *console["load"](user.is_admin)]

    def ui_label(choice: str, cid, strength, note, request: gr.Request):
        user = _user(store, request)
        if cid is None:
            return view(with_progress(assignment.next_pair(store, user, lease), user), user, "")
        try:
            stored, pair = assignment.submit_and_next(
                store, user, int(cid), choice, _strength(strength), _note(note), lease
            )
        except RewardlabError as exc:
            return view(with_progress(assignment.next_pair(store, user, lease), user), user, str(exc))
        if stored:
            status = f"Saved: {CHOICE_NAMES[choice]}" + (f" ({strength})" if strength else "") + "."
        else:
            status = "That pair was already fully labelled by others; here is the next."
        return view(pair, user, status)

    def ui_skip(cid, request: gr.Request):
        user = _user(store, request)
        status = "Skipped."
        if cid is not None:
            try:
                assignment.skip(store, user, int(cid))
            except RewardlabError as exc:
                status = str(exc)
        return view(with_progress(assignment.next_pair(store, user, lease), user), user, status)

    def ui_undo(request: gr.Request):
        user = _user(store, request)
        pair = with_progress(assignment.undo(store, user, lease), user)
        if pair is None:
            return view(with_progress(assignment.next_pair(store, user, lease), user), user,
                        "Nothing to undo.")
        return view(pair, user, "Undone: your last label was removed; label this pair again.")

    def ui_admin_tables():
        report = console["progress_report"]()
        return [*_admin_view(report), *console_ui.model_rows(report)]

    def ui_admin_refresh(request: gr.Request):
        _admin(store, request)
        return ui_admin_tables()

    private = dict(api_visibility="private", concurrency_limit=CONCURRENCY_LIMIT)
    for key, value in QUEUE_ANALYTICS_ENV.items():
        os.environ.setdefault(key, value)
    with gr.Blocks(title=config.title) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(f"# {html.escape(config.title)}")
            who_md = gr.Markdown(elem_id="rl-who")
            gr.Button("Log out", link="/logout", size="sm", variant="secondary", scale=0, min_width=90)
        cid_state = gr.State(None)
        with gr.Tabs():
            with gr.Tab("Annotate", id="annotate"):
                with gr.Accordion("Guidelines", open=False):
                    gr.Markdown(config.guidelines)
                with gr.Row():
                    progress_md = gr.Markdown(elem_id="rl-progress")
                    status_md = gr.Markdown(elem_id="rl-status")
                done_md = gr.Markdown(
                    "## All done\nNothing is left for you to label right now. Thank you!\n\n"
                    "(Press **Undo** to change your last label.)",
                    visible=False, elem_id="rl-done",
                )
                with gr.Column(visible=True) as pair_col:
                    prompt_chat = gr.Chatbot(label="Prompt", elem_id="rl-prompt", max_height=320,
                                             min_height=80, height=None, buttons=[],
                                             render_markdown=False)
                    with gr.Row(equal_height=True):
                        resp_a = gr.Textbox(label="Response A", elem_id="rl-response-a", interactive=False,
                                            lines=10, max_lines=30)
                        resp_b = gr.Textbox(label="Response B", elem_id="rl-response-b", interactive=False,
                                            lines=10, max_lines=30)
                with gr.Row(elem_id="rl-buttons"):
                    buttons = [
                        gr.Button(label, elem_id=elem_id,
                                  variant="primary" if action in CHOICES else "secondary")
                        for label, elem_id, action, _ in BUTTONS
                    ]
                with gr.Row():
                    strength = gr.Radio(["slight", "clear"], value=None, label="Strength (optional)",
                                        elem_id="rl-strength")
                    note = gr.Textbox(label="Note (optional)", elem_id="rl-note", max_length=assignment.MAX_NOTE_CHARS,
                                      placeholder="anything worth telling the admin about this pair")
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                admin_summary = gr.Markdown(elem_id="rl-admin-summary")
                admin_table = gr.Dataframe(headers=ADMIN_HEADERS, interactive=False, wrap=True,
                                           elem_id="rl-admin-table")
                model_table, pairs_table = console_ui.model_tables()
                refresh = gr.Button("Refresh", size="sm", elem_id="rl-admin-refresh")
            console = console_ui.build_console(store, workspace, lambda request: _admin(store, request),
                                               CONCURRENCY_LIMIT)

        outputs = [cid_state, prompt_chat, resp_a, resp_b, progress_md, status_md, strength, note,
                   pair_col, done_md, *buttons[:5]]
        console_outputs = console["outside_tabs"]()
        demo.load(ui_load, outputs=[*outputs, who_md, admin_tab, admin_summary, admin_table, model_table,
                                    pairs_table, *console_outputs], **private)
        for button, (_, _, action, _) in zip(buttons, BUTTONS):
            if action in CHOICES:
                button.click(_bind_label(ui_label, action), [cid_state, strength, note], outputs, **private)
        buttons[4].click(ui_skip, [cid_state], outputs, **private)
        buttons[5].click(ui_undo, None, outputs, **private)
        refresh.click(ui_admin_refresh, None, [admin_summary, admin_table, model_table, pairs_table], **private)

        for fn, name in [(next_pair, "next_pair"), (submit_label, "submit_label"), (skip, "skip"),
                         (undo, "undo"), (progress, "progress"), (admin_stats_api, "admin_stats")]:
            gr.api(fn, api_name=name, concurrency_limit=CONCURRENCY_LIMIT)
    return demo


def _default_workspace(store: Store) -> Path:
    from sqlalchemy.engine import make_url

    from rewardlab.workspace import default_workspace

    database = make_url(store.url).database if store.is_sqlite else None
    if database and database != ":memory:":
        return Path(database).expanduser().resolve().parent
    return default_workspace().expanduser().resolve()


def _bind_label(ui_label, choice: str):
    def handler(cid, strength, note, request: gr.Request):
        return ui_label(choice, cid, strength, note, request)

    return handler


def launch_kwargs(store: Store, config: WorkspaceConfig | None = None) -> dict:
    """What ``Blocks.launch`` needs besides host and port: the login, the keyboard script, CSS."""
    return {
        # --- security hook (annotate/security.py): throttled sign-in, expiring sessions, logout ---
        **security.launch_kwargs(store, config or WorkspaceConfig()),
        # --- end of security hook ---
        "head": HEAD,
        "css": CSS,
        "max_threads": 40,
        "show_error": True,
        "enable_monitoring": ENABLE_MONITORING,  # see QUEUE_ANALYTICS_ENV
    }


def serve(workspace: Path, db: str | None = None, host: str = "127.0.0.1", port: int = 7860,
          demo: bool = False) -> None:
    """Open the workspace's store (the demo workspace when ``demo``) and serve the app (blocks)."""
    workspace = Path(workspace)
    if demo:
        from annotate.demo import prepare_demo

        store, admin_name, admin_password = prepare_demo(workspace)
    else:
        store = Store(db_url(db, workspace))
    config = load_config(workspace)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{shown_host}:{port}"
    if demo:
        print(f"rewardlab annotate: {url} (log in as {admin_name} / {admin_password})", flush=True)
    else:
        with store.read() as s:
            has_admin = s.scalar(
                select(func.count()).select_from(Annotator).where(Annotator.role == "admin", Annotator.active)
            )
        print(f"rewardlab annotate: {url}", flush=True)
        if not has_admin:
            print("  no admin account yet: add one with `rewardlab users add NAME --admin` "
                  "(and annotators with `rewardlab users add NAME`)", flush=True)
    app = build_app(store, config, workspace)
    # Everything loaded so far lives as long as the server: move it out of the collector's way so
    # full collections during requests stay short.
    gc.collect()
    gc.freeze()
    try:
        app.launch(server_name=host, server_port=port, quiet=True, **launch_kwargs(store, config))
    except OSError as exc:
        raise RewardlabError(f"cannot serve on {host}:{port}: {exc}; choose another --port") from None
    finally:
        store.close()
