"""The admin console in the app: its tabs (Data, Reward model, PPO, Evaluate, Reward design, Jobs),
the per-model progress tables, and its scripting API.

Every handler, on the page and in the API alike, first checks that the caller is an admin
(``admin_check``, the app's ``_admin``): an annotator who calls an endpoint by hand gets
``admins only``, whatever the page shows. The work itself is ``annotate.console.Console``; errors
it raises come back as one-line messages (``AppError`` in gradio_client, a toast on the page).

Scripting API (admins; arguments in order; see docs/admin.md for the settings of each ``params``):

- ``/console_import_prompts(path: str, field: str | None, skip_invalid: bool)`` -> counts.
- ``/console_start(kind: str, params: dict)`` -> job: kind ``generate`` | ``reward_train`` | ``ppo``
  | ``evaluate``.
- ``/console_jobs()`` -> the latest jobs; ``/console_job(job_id: int)`` -> a job with ``log_tail``,
  ``metrics``, ``samples``, ``plots`` and ``report``; ``/console_cancel(job_id: int)``;
  ``/console_resume(job_id: int)`` (a PPO run, from its last checkpoint).
- ``/console_export(out: str, style: str, tag: str | None)`` -> the export summary.
- ``/console_progress()`` -> ``{"annotators", "comparisons", "agreement", "models", "pairs"}``.
- ``/console_human_win_rate(tag: str | None)`` -> ``train.human_eval.human_win_rate``.
- ``/console_reward_breakdown(reward: str, response: str, prompt_id: int | None, prompt_text: str | None)``.
- ``/console_disagreements(reward: str, tag: str | None)``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

import gradio as gr

from annotate import jobs, reward_design
from annotate.console import Console, default_config_yaml
from annotate.model_progress import model_progress
from rewardlab.errors import RewardlabError

KINDS = ("generate", "reward_train", "ppo", "evaluate")
JOB_HEADERS = ["id", "kind", "status", "started (UTC)", "ended (UTC)", "by", "output"]
MODEL_HEADERS = ["model", "labels", "wins", "losses", "ties", "both bad", "median s/label", "agreement %",
                 "items 2+ labels"]
PAIR_HEADERS = ["model A", "model B", "A wins", "B wins", "ties", "both bad", "A win-rate", "95% interval"]
TERM_HEADERS = ["term", "type", "raw", "normalized", "weight", "weighted"]
DISAGREE_HEADERS = ["comparison", "margin", "reward chosen", "reward rejected", "prompt", "chosen (annotators)",
                    "rejected (annotators)", "labels"]


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise RewardlabError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def model_rows(report: dict) -> tuple[list[list], list[list]]:
    models = [[m["model"], m["labels"], m["wins"], m["losses"], m["ties"], m["both_bad"],
               "–" if m["median_seconds"] is None else m["median_seconds"], _pct(m["percent_agreement"]),
               m["n_items"]] for m in report["models"]]
    pairs = [[p["model_a"], p["model_b"], p["a_wins"], p["b_wins"], p["ties"], p["both_bad"],
              _pct(p["a_win_rate"]),
              "–" if not p["a_win_rate_ci"] else f"{100 * p['a_win_rate_ci'][0]:.1f}–{100 * p['a_win_rate_ci'][1]:.1f}%"]
             for p in report["pairs"]]
    return models, pairs


def _curves(rows: list[dict], x: str, keys: tuple[str, ...]):
    """Metrics rows as a long table (x, value, series) for gr.LinePlot."""
    import pandas as pd

    data = [{x: r[x], "value": float(r[k]), "series": k} for r in rows for k in keys
            if isinstance(r.get(x), (int, float)) and isinstance(r.get(k), (int, float))]
    return pd.DataFrame(data, columns=[x, "value", "series"])


def _images(paths: list[str]) -> list:
    """PNG files as images (Gradio copies them to its cache: no workspace file is served by path)."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append((im.convert("RGB"), Path(p).name))
        except OSError:
            continue
    return out


def _status(view: dict | None, console: Console) -> str:
    if view is None:
        return "No job yet."
    out = f" · output `{html.escape(str(Path(view['out']).relative_to(console.workspace)))}`" if view["out"] and \
        Path(view["out"]).is_relative_to(console.workspace) else ""
    code = "" if view["exit_code"] is None else f" (exit {view['exit_code']})"
    return f"**Job {view['id']}** ({view['kind']}): **{view['status']}**{code} · started {view['started_at']}{out}"


def build_console(store, workspace: Path, admin_check: Callable, concurrency_limit=None) -> dict:
    """Inside ``gr.Blocks`` and ``gr.Tabs``: add the admin tabs (hidden until an admin loads the
    page). Returns what the app wires up: ``outside_tabs()`` (call it after the tabs: registers the
    API and the live timer, returns the page-load outputs), ``load(is_admin)`` (their values) and
    ``progress_report()``."""
    console = Console(store, workspace)

    def run(request, fn, *args):
        user = admin_check(request)
        try:
            return fn(*args) if not getattr(fn, "_wants_user", False) else fn(*args, user=user.name)
        except RewardlabError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def as_user(fn):
        fn._wants_user = True
        return fn

    starters = {"generate": console.start_generate, "reward_train": console.start_reward_train,
                "ppo": console.start_ppo, "evaluate": console.start_evaluate}

    def start(kind, params, user=""):
        if kind not in starters:
            raise RewardlabError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return starters[kind](params, user=user)

    def progress_report() -> dict:
        from annotate.app import admin_stats

        return {**admin_stats(store), **model_progress(store)}

    # --- the API ---

    def console_import_prompts(path: str, field: str | None, skip_invalid: bool, request: gr.Request) -> dict:
        """Admins: import prompts from a file or folder inside the workspace."""
        return run(request, console.import_prompts, path, field, skip_invalid)

    def console_start(kind: str, params: dict, request: gr.Request) -> dict:
        """Admins: start a background job (generate, reward_train, ppo, evaluate)."""
        return run(request, as_user(start), kind, params)

    def console_jobs(request: gr.Request) -> list:
        """Admins: the latest jobs, newest first."""
        return run(request, jobs.list_jobs, store)

    def console_job(job_id: int, request: gr.Request) -> dict:
        """Admins: one job with its log tail, metrics, samples, plots and report."""
        return run(request, lambda: console.job_view(_whole(job_id, "job_id")))

    def console_cancel(job_id: int, request: gr.Request) -> dict:
        """Admins: stop a running job (its whole process group)."""
        return run(request, lambda: jobs.cancel(store, _whole(job_id, "job_id")))

    def console_resume(job_id: int, request: gr.Request) -> dict:
        """Admins: resume a stopped PPO run from its last checkpoint (a new job)."""
        return run(request, as_user(lambda user="": console.resume_ppo(_whole(job_id, "job_id"), user=user)))

    def console_export(out: str, style: str, tag: str | None, request: gr.Request) -> dict:
        """Admins: export the labels as a TRL preference dataset inside the workspace."""
        return run(request, console.export, out, style, tag)

    def console_progress(request: gr.Request) -> dict:
        """Admins: per-annotator and per-model figures, and head-to-head win-rates."""
        return run(request, progress_report)

    def console_human_win_rate(tag: str | None, request: gr.Request) -> dict:
        """Admins: the human win-rate of aligned over base (evaluation pairs tagged eval:TAG)."""
        return run(request, console.human_win_rate, tag)

    def console_reward_breakdown(reward: str, response: str, prompt_id: int | None, prompt_text: str | None,
                                 request: gr.Request) -> dict:
        """Admins: each term of a composed reward for one (prompt, response), and the total."""
        return run(request, reward_design.breakdown, store, console.workspace, reward, response, prompt_id,
                   prompt_text)

    def console_disagreements(reward: str, tag: str | None, request: gr.Request) -> dict:
        """Admins: labelled pairs the reward ranks the other way round from the annotators."""
        return run(request, reward_design.disagreements, store, console.workspace, reward, tag)

    # --- the page ---
    private = dict(api_visibility="private", concurrency_limit=concurrency_limit)
    tabs = []

    def job_panel(kind: str, curves=None):
        """Status, live curves, log, report and plots of the latest job of ``kind``."""
        status = gr.Markdown("No job yet.", elem_id=f"rl-{kind}-status")
        plots = [gr.LinePlot(x=x, y="value", color="series", title=title, height=220, elem_id=f"rl-{kind}-{i}")
                 for i, (x, _keys, title) in enumerate(curves or [])]
        extra = []
        if kind == "ppo":
            extra.append(gr.Dataframe(headers=["update", "prompt", "response", "reward"], wrap=True,
                                      interactive=False, label="Latest samples", elem_id="rl-ppo-samples"))
        log = gr.Textbox(label="Log (last lines)", lines=8, max_lines=16, interactive=False, autoscroll=True,
                         elem_id=f"rl-{kind}-log")
        with gr.Accordion("Report and plots", open=kind in ("reward_train", "evaluate")):
            report = gr.Code(label="Report", language="markdown" if kind == "evaluate" else "json",
                             interactive=False, elem_id=f"rl-{kind}-report")
            gallery = gr.Gallery(label="Plots", columns=3, height="auto", elem_id=f"rl-{kind}-plots")
        outputs = [status, *plots, *extra, log, report, gallery]

        def values(view: dict | None) -> list:
            if view is None:
                return ["No job yet.", *[None for _ in plots], *[[] for _ in extra], "", None, []]
            curve_values = [_curves(view["metrics"], x, keys) for x, keys, _ in curves or []]
            samples = [[s.get("update"), str(s.get("prompt", ""))[-300:], str(s.get("response", "")),
                        s.get("reward", s.get("score"))] for s in view["samples"]] if extra else []
            return [_status(view, console), *curve_values, *([samples] if extra else []), view["log_tail"],
                    view["report"], _images(view["plots"])]

        def latest_view():
            job = jobs.latest(store, kind)
            return None if job is None else console.job_view(job["id"])

        return outputs, values, latest_view

    def form_error(exc: RewardlabError) -> str:
        return f"⚠️ {html.escape(str(exc))}"

    with gr.Tab("Data", id="console-data", visible=False) as tab:
        tabs.append(tab)
        gr.Markdown("Paths are inside the workspace `" + html.escape(str(console.workspace)) + "` (relative to it).")
        with gr.Group():
            gr.Markdown("### Import prompts")
            with gr.Row():
                imp_path = gr.Textbox(label="File or folder", placeholder="prompts.jsonl", elem_id="rl-import-path")
                imp_field = gr.Textbox(label="Prompt column (optional)", elem_id="rl-import-field")
                imp_skip = gr.Checkbox(label="Skip invalid rows", value=False)
            imp_btn = gr.Button("Import", elem_id="rl-import")
            imp_out = gr.Markdown(elem_id="rl-import-result")
        with gr.Group():
            gr.Markdown("### Generate candidates")
            with gr.Row():
                gen_models = gr.Textbox(label="Models (aliases or folders, space-separated)", value="smollm2-135m",
                                        elem_id="rl-gen-models")
                gen_per = gr.Number(label="Responses per prompt and model", value=2, precision=0)
                gen_pairs = gr.Number(label="Pairs per prompt", value=1, precision=0)
            with gr.Row():
                gen_tokens = gr.Number(label="Max new tokens", value=128, precision=0, elem_id="rl-gen-tokens")
                gen_temp = gr.Number(label="Temperature", value=0.8)
                gen_top_p = gr.Number(label="Top-p", value=0.95)
                gen_limit = gr.Number(label="At most N prompts (0: all)", value=0, precision=0)
            gen_btn = gr.Button("Start generation", variant="primary", elem_id="rl-gen-start")
            gen_msg = gr.Markdown(elem_id="rl-gen-msg")
            gen_outputs, gen_values, gen_latest = job_panel("generate")
        with gr.Group():
            gr.Markdown("### Export the preference dataset")
            with gr.Row():
                exp_out = gr.Textbox(label="Output folder", value="exports/preferences", elem_id="rl-export-out")
                exp_style = gr.Dropdown(["auto", "explicit", "implicit", "conversational"], value="auto", label="Style")
                exp_tag = gr.Textbox(label="Only this tag (optional)")
            exp_btn = gr.Button("Export", elem_id="rl-export")
            exp_out_md = gr.Markdown(elem_id="rl-export-result")

    with gr.Tab("Reward model", id="console-reward", visible=False) as tab:
        tabs.append(tab)
        with gr.Row():
            rm_data = gr.Textbox(label="Preference data", value="exports/preferences", elem_id="rl-rm-data")
            rm_out = gr.Textbox(label="Output folder", value="runs/reward", elem_id="rl-rm-out")
            rm_model = gr.Textbox(label="Backbone (alias or folder; empty: the config's)", elem_id="rl-rm-model")
        rm_config = gr.Code(default_config_yaml("reward_train"), language="yaml", label="Config (as `--config` YAML)",
                            interactive=True, elem_id="rl-rm-config")
        rm_btn = gr.Button("Start training", variant="primary", elem_id="rl-rm-start")
        rm_msg = gr.Markdown(elem_id="rl-rm-msg")
        rm_outputs, rm_values, rm_latest = job_panel(
            "reward_train", [("step", ("loss", "eval_loss"), "Loss"), ("step", ("accuracy", "eval_accuracy"), "Accuracy")])

    with gr.Tab("PPO", id="console-ppo", visible=False) as tab:
        tabs.append(tab)
        with gr.Row():
            ppo_reward = gr.Textbox(label="Reward (YAML or reward-model folder)", value="runs/reward",
                                    elem_id="rl-ppo-reward")
            ppo_prompts = gr.Textbox(label="Prompts (file, or `store`)", value="store", elem_id="rl-ppo-prompts")
            ppo_out = gr.Textbox(label="Run folder", value="runs/ppo", elem_id="rl-ppo-out")
            ppo_policy = gr.Textbox(label="Policy (alias or folder; empty: the config's)", elem_id="rl-ppo-policy")
        ppo_config = gr.Code(default_config_yaml("ppo"), language="yaml", label="Config (as `--config` YAML)",
                             interactive=True, elem_id="rl-ppo-config")
        with gr.Row():
            ppo_btn = gr.Button("Start PPO", variant="primary", elem_id="rl-ppo-start")
            ppo_stop = gr.Button("Stop", variant="stop", elem_id="rl-ppo-stop")
            ppo_resume = gr.Button("Resume", elem_id="rl-ppo-resume")
        ppo_msg = gr.Markdown(elem_id="rl-ppo-msg")
        ppo_outputs, ppo_values, ppo_latest = job_panel(
            "ppo", [("update", ("reward",), "Reward"), ("update", ("kl",), "KL to the reference")])

    with gr.Tab("Evaluate", id="console-evaluate", visible=False) as tab:
        tabs.append(tab)
        with gr.Row():
            ev_aligned = gr.Textbox(label="Aligned (adapter or model folder)", value="runs/ppo/adapter",
                                    elem_id="rl-ev-aligned")
            ev_reward = gr.Textbox(label="Reward (YAML or folder)", value="runs/reward", elem_id="rl-ev-reward")
            ev_prompts = gr.Textbox(label="Held-out prompts file", elem_id="rl-ev-prompts")
        with gr.Row():
            ev_base = gr.Textbox(label="Base model (empty: the adapter's base)", elem_id="rl-ev-base")
            ev_out = gr.Textbox(label="Output folder", value="runs/eval", elem_id="rl-ev-out")
            ev_tag = gr.Textbox(label="Tag (names the queued pairs)", value="run1", elem_id="rl-ev-tag")
            ev_tokens = gr.Number(label="Max new tokens", value=64, precision=0, elem_id="rl-ev-tokens")
            ev_queue = gr.Checkbox(label="Queue blind human evaluation", value=True)
        ev_btn = gr.Button("Run evaluation", variant="primary", elem_id="rl-ev-start")
        ev_msg = gr.Markdown(elem_id="rl-ev-msg")
        ev_outputs, ev_values, ev_latest = job_panel("evaluate")
        with gr.Row():
            hw_tag = gr.Textbox(label="Human win-rate of tag", value="run1", elem_id="rl-hw-tag")
            hw_btn = gr.Button("Show human win-rate", elem_id="rl-hw")
        hw_out = gr.Markdown(elem_id="rl-hw-result")

    with gr.Tab("Reward design", id="console-design", visible=False) as tab:
        tabs.append(tab)
        rd_reward = gr.Textbox(label="Reward (composed-reward YAML or reward-model folder)", value="runs/reward",
                               elem_id="rl-rd-reward")
        with gr.Row():
            rd_pid = gr.Number(label="Prompt id from the store (0: the pasted prompt)", value=0, precision=0,
                               elem_id="rl-rd-pid")
            rd_prompt = gr.Textbox(label="Prompt", lines=3, elem_id="rl-rd-prompt")
            rd_response = gr.Textbox(label="Response", lines=3, elem_id="rl-rd-response")
        rd_btn = gr.Button("Break down", variant="primary", elem_id="rl-rd-go")
        rd_total = gr.Markdown(elem_id="rl-rd-total")
        rd_terms = gr.Dataframe(headers=TERM_HEADERS, interactive=False, elem_id="rl-rd-terms")
        with gr.Row():
            dis_tag = gr.Textbox(label="Only comparisons with this tag (optional)")
            dis_btn = gr.Button("Find disagreements with the annotators", elem_id="rl-dis-go")
        dis_md = gr.Markdown(elem_id="rl-dis-summary")
        dis_table = gr.Dataframe(headers=DISAGREE_HEADERS, interactive=False, wrap=True, elem_id="rl-dis-table")

    with gr.Tab("Jobs", id="console-jobs", visible=False) as tab:
        tabs.append(tab)
        jobs_table = gr.Dataframe(headers=JOB_HEADERS, interactive=False, wrap=True, elem_id="rl-jobs-table")
        with gr.Row():
            cancel_id = gr.Number(label="Job id", precision=0, elem_id="rl-cancel-id")
            cancel_btn = gr.Button("Cancel job", variant="stop", elem_id="rl-cancel")
        cancel_md = gr.Markdown(elem_id="rl-cancel-msg")


    # --- page handlers (each checks the caller) ---

    def job_rows() -> list[list]:
        return [[j["id"], j["kind"], j["status"], j["started_at"], j["ended_at"] or "", j["created_by"],
                 str(j["out"])] for j in jobs.list_jobs(store)]

    panels = [(gen_outputs, gen_values, gen_latest), (rm_outputs, rm_values, rm_latest),
              (ppo_outputs, ppo_values, ppo_latest), (ev_outputs, ev_values, ev_latest)]
    live_outputs = [jobs_table] + [o for outputs, _, _ in panels for o in outputs]

    def live_values() -> list:
        values = [job_rows()]
        for _, fn, latest_view in panels:
            values += fn(latest_view())
        return values

    def ui_tick(request: gr.Request):
        admin_check(request)
        return live_values()

    def start_from_page(kind: str, params: dict, request: gr.Request) -> list:
        user = admin_check(request)
        try:
            msg = f"Started job {start(kind, params, user=user.name)['id']}."
        except RewardlabError as exc:
            msg = form_error(exc)
        return [msg, *live_values()]

    # Gradio passes the request only to a parameter annotated gr.Request: one handler per form.
    def ui_generate(models, per, pairs, tokens, temp, top_p, limit, request: gr.Request):
        return start_from_page("generate", {
            "models": models, "per_prompt": per, "pairs_per_prompt": pairs, "max_new_tokens": tokens,
            "temperature": temp, "top_p": top_p, "limit": limit or None}, request)

    def ui_reward_train(data, out, model, config, request: gr.Request):
        return start_from_page("reward_train", {"data": data, "out": out, "model": model, "config": config}, request)

    def ui_ppo(reward, prompts, out, policy, config, request: gr.Request):
        return start_from_page("ppo", {"reward": reward, "prompts": prompts, "out": out, "policy": policy,
                                       "config": config}, request)

    def ui_evaluate(aligned, reward, prompts, base, out, tag, tokens, queue, request: gr.Request):
        return start_from_page("evaluate", {
            "aligned": aligned, "reward": reward, "prompts": prompts, "base": base, "out": out, "tag": tag,
            "max_new_tokens": tokens, "queue": bool(queue)}, request)

    gen_btn.click(ui_generate, [gen_models, gen_per, gen_pairs, gen_tokens, gen_temp, gen_top_p, gen_limit],
                  [gen_msg, *live_outputs], **private)
    rm_btn.click(ui_reward_train, [rm_data, rm_out, rm_model, rm_config], [rm_msg, *live_outputs], **private)
    ppo_btn.click(ui_ppo, [ppo_reward, ppo_prompts, ppo_out, ppo_policy, ppo_config], [ppo_msg, *live_outputs],
                  **private)
    ev_btn.click(ui_evaluate, [ev_aligned, ev_reward, ev_prompts, ev_base, ev_out, ev_tag, ev_tokens, ev_queue],
                 [ev_msg, *live_outputs], **private)

    def job_action(action: str, job_id, request: gr.Request) -> list:
        user = admin_check(request)
        try:
            if action == "cancel":
                job = jobs.cancel(store, _whole(job_id, "job id"))
                msg = f"Job {job['id']}: {job['status']}."
            else:
                job = jobs.latest(store, "ppo")
                if job is None:
                    raise RewardlabError(f"no PPO run to {action}")
                if action == "stop":
                    job = jobs.cancel(store, job["id"])
                    msg = f"Stopped job {job['id']} ({job['status']})."
                else:
                    msg = f"Resumed as job {console.resume_ppo(job['id'], user=user.name)['id']}."
        except RewardlabError as exc:
            msg = form_error(exc)
        return [msg, *live_values()]

    def ui_stop(request: gr.Request):
        return job_action("stop", None, request)

    def ui_resume(request: gr.Request):
        return job_action("resume", None, request)

    def ui_cancel(job_id, request: gr.Request):
        return job_action("cancel", job_id, request)

    ppo_stop.click(ui_stop, None, [ppo_msg, *live_outputs], **private)
    ppo_resume.click(ui_resume, None, [ppo_msg, *live_outputs], **private)
    cancel_btn.click(ui_cancel, [cancel_id], [cancel_md, *live_outputs], **private)

    def ui_import(path, field, skip, request: gr.Request):
        admin_check(request)
        try:
            r = console.import_prompts(path, field, skip)
        except RewardlabError as exc:
            return form_error(exc)
        rejected = "".join(f"\n- {html.escape(x)}" for x in r["rejected_rows"])
        return f"Imported **{r['added']}** prompts; {r['duplicates']} duplicates skipped; {r['rejected']} rejected.{rejected}"

    def ui_export(out, style, tag, request: gr.Request):
        admin_check(request)
        try:
            r = console.export(out, style, tag)
        except RewardlabError as exc:
            return form_error(exc)
        return (f"Exported **{r['pairs_exported']}** pairs to `{html.escape(r['out'])}` ({r['style']}); dropped: "
                f"{r['dropped_tie']} ties, {r['dropped_both_bad']} both bad, {r['dropped_disagreement']} disagreements.")

    def ui_human(tag, request: gr.Request):
        admin_check(request)
        try:
            r = console.human_win_rate(tag)
        except RewardlabError as exc:
            return form_error(exc)
        if not r["n"]:
            return f"No labels yet on the {r['comparisons']} pairs tagged `{html.escape(r['tag'])}`."
        lo, hi = r["win_rate_ci"]
        return (f"Human win-rate of aligned over base (`{html.escape(r['tag'])}`): **{r['win_rate']:.3f}** "
                f"[{lo:.3f}, {hi:.3f}] from {r['n']} labels: {r['aligned_wins']} aligned, {r['base_wins']} base, "
                f"{r['ties']} ties; {r['both_bad']} both bad.")

    def ui_breakdown(reward, pid, prompt, response, request: gr.Request):
        admin_check(request)
        try:
            r = reward_design.breakdown(store, console.workspace, reward, response or "", pid or None, prompt)
        except RewardlabError as exc:
            return form_error(exc), []
        rows = [[t["name"], t["type"], round(t["raw"], 4), round(t["normalized"], 4), t["weight"],
                 round(t["weighted"], 4)] for t in r["terms"]]
        return f"**Total** {r['total']:.4f} ({len(rows)} terms, reward `{html.escape(r['reward'])}`)", rows

    def ui_disagreements(reward, tag, request: gr.Request):
        admin_check(request)
        try:
            r = reward_design.disagreements(store, console.workspace, reward, tag)
        except RewardlabError as exc:
            return form_error(exc), []
        rows = [[d["comparison_id"], round(d["margin"], 4), round(d["reward_chosen"], 4),
                 round(d["reward_rejected"], 4), d["prompt"], d["chosen"], d["rejected"], d["n_labels"]]
                for d in r["disagreements"]]
        return (f"The reward agrees with the annotators on **{_pct(r['agreement'])}** of {r['n']} pairs; "
                f"{len(rows)} disagreements below, most confident first (click a header to sort)."), rows

    imp_btn.click(ui_import, [imp_path, imp_field, imp_skip], imp_out, **private)
    exp_btn.click(ui_export, [exp_out, exp_style, exp_tag], exp_out_md, **private)
    hw_btn.click(ui_human, [hw_tag], hw_out, **private)
    rd_btn.click(ui_breakdown, [rd_reward, rd_pid, rd_prompt, rd_response], [rd_total, rd_terms], **private)
    dis_btn.click(ui_disagreements, [rd_reward, dis_tag], [dis_md, dis_table], **private)

    timer = None

    def outside_tabs():
        """Register the API and the live-update timer (they may not sit inside gr.Tabs)."""
        nonlocal timer
        for fn in (console_import_prompts, console_start, console_jobs, console_job, console_cancel, console_resume,
                   console_export, console_progress, console_human_win_rate, console_reward_breakdown,
                   console_disagreements):
            gr.api(fn, api_name=fn.__name__, concurrency_limit=concurrency_limit)
        timer = gr.Timer(2.0, active=False)
        timer.tick(ui_tick, None, live_outputs, **private, show_progress="hidden")
        return [*tabs, timer, *live_outputs]

    def load(is_admin: bool) -> list:
        """Values for ``load_outputs`` when a page loads."""
        if not is_admin:
            return [*[gr.Tab(visible=False) for _ in tabs], gr.Timer(active=False),
                    *[gr.skip() for _ in live_outputs]]
        return [*[gr.Tab(visible=True) for _ in tabs], gr.Timer(active=True), *live_values()]

    return {"tabs": tabs, "outside_tabs": outside_tabs, "load": load, "progress_report": progress_report}


def model_tables() -> tuple:
    """The per-model and head-to-head tables of the Admin tab (filled by ``model_rows``)."""
    gr.Markdown("#### Per model")
    models = gr.Dataframe(headers=MODEL_HEADERS, interactive=False, wrap=True, elem_id="rl-model-table")
    gr.Markdown("#### Head to head (ties count half; both-bad left out)")
    pairs = gr.Dataframe(headers=PAIR_HEADERS, interactive=False, wrap=True, elem_id="rl-pairs-table")
    return models, pairs
