"""The admin console in a real browser (Debian chromium through Playwright): an admin walks import,
generate, label, export, reward training, PPO and evaluation on tiny models, from the page alone."""

from __future__ import annotations

import pytest

from test_app import running
from test_browser import browser, login  # noqa: F401 (browser is a fixture)
from test_console import ws, ws_store  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JOB_TIMEOUT_MS = 240_000
RM_CONFIG = "max_steps: 2\nbatch_size: 4\nmax_length: 64\neval_fraction: 0.25\nlogging_steps: 1\nsave_steps: 0\n"
PPO_CONFIG = ("total_episodes: 16\nresponse_length: 6\nper_device_train_batch_size: 4\n"
              "local_rollout_forward_batch_size: 4\nsave_every: 2\nsample_every: 1\n")


def type_in(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def set_code(page, elem_id: str, text: str) -> None:
    editor = page.locator(f"#{elem_id} .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    editor.fill(text)


def wait_text(page, elem_id: str, text: str, timeout: int = 20_000) -> None:
    page.wait_for_function(
        "([id, text]) => (document.getElementById(id)?.innerText || '').includes(text)",
        arg=[elem_id, text], timeout=timeout)


def start(page, button: str, message: str) -> None:
    page.click(f"#{button}")
    page.wait_for_function("(id) => /Started job|⚠️/.test(document.getElementById(id)?.innerText || '')",
                           arg=message, timeout=20_000)
    assert "Started job" in page.inner_text(f"#{message}"), page.inner_text(f"#{message}")


def wait_job(page, kind: str) -> None:
    page.wait_for_function(
        "(id) => /succeeded|failed|cancelled|lost/.test(document.getElementById(id)?.innerText || '')",
        arg=f"rl-{kind}-status", timeout=JOB_TIMEOUT_MS)
    status = page.inner_text(f"#rl-{kind}-status")
    assert "succeeded" in status, f"{status}\n{page.input_value(f'#rl-{kind}-log textarea')}"


def test_admin_runs_the_loop_from_the_browser(browser, ws, ws_store):  # noqa: F811
    with running(ws_store) as url:
        page = login(browser, url, "root")
        page.get_by_role("tab", name="Data").click()
        type_in(page, "rl-import-path", "prompts.jsonl")
        page.click("#rl-import")
        wait_text(page, "rl-import-result", "Imported 8 prompts")

        type_in(page, "rl-gen-models", "models/tiny")
        type_in(page, "rl-gen-tokens", "8")
        start(page, "rl-gen-start", "rl-gen-msg")
        wait_job(page, "generate")

        page.reload()  # the Annotate tab, now with the new pairs; labelled with the keyboard
        page.wait_for_function("() => /remaining [1-9]/.test(document.querySelector('#rl-progress')?.innerText)")
        while page.locator("#rl-done").is_hidden():
            before = page.inner_text("#rl-progress")
            page.locator("h1").first.click()
            page.keyboard.press("1")
            page.wait_for_function("(prev) => document.querySelector('#rl-progress').innerText !== prev", arg=before)
        assert "done 8" in page.inner_text("#rl-progress")

        page.get_by_role("tab", name="Data").click()
        page.click("#rl-export")
        wait_text(page, "rl-export-result", "Exported 8 pairs")

        page.get_by_role("tab", name="Reward model").click()
        type_in(page, "rl-rm-model", "models/tiny")
        set_code(page, "rl-rm-config", RM_CONFIG)
        start(page, "rl-rm-start", "rl-rm-msg")
        wait_job(page, "reward_train")
        assert '"accuracy"' in page.inner_text("#rl-reward_train-report")

        page.get_by_role("tab", name="Reward design").click()
        type_in(page, "rl-rd-prompt", "What is the capital of France?")
        type_in(page, "rl-rd-response", "<script>window.__pwned=1</script> Paris.")
        page.click("#rl-rd-go")
        wait_text(page, "rl-rd-total", "Total")
        assert "reward_model" in page.inner_text("#rl-rd-terms")
        page.click("#rl-dis-go")
        wait_text(page, "rl-dis-summary", "of 8 pairs")

        page.get_by_role("tab", name="PPO").click()
        type_in(page, "rl-ppo-policy", "models/tiny")
        set_code(page, "rl-ppo-config", PPO_CONFIG)
        start(page, "rl-ppo-start", "rl-ppo-msg")
        wait_job(page, "ppo")
        assert page.locator("#rl-ppo-samples tbody tr").count() >= 1

        page.get_by_role("tab", name="Evaluate").click()
        type_in(page, "rl-ev-prompts", "prompts.jsonl")
        type_in(page, "rl-ev-tokens", "6")
        start(page, "rl-ev-start", "rl-ev-msg")
        wait_job(page, "evaluate")
        assert "win rate" in page.inner_text("#rl-evaluate-report").lower()
        page.click("#rl-hw")
        wait_text(page, "rl-hw-result", "run1")

        page.get_by_role("tab", name="Jobs").click()
        wait_text(page, "rl-jobs-table", "evaluate")
        assert page.inner_text("#rl-jobs-table").count("succeeded") == 4
        assert page.evaluate("typeof window.__pwned") == "undefined"
        page.screenshot(path="/tmp/rewardlab_console.png", full_page=True)
        page.close()

        annotator = login(browser, url, "alice")
        for name in ("Data", "Reward model", "PPO", "Evaluate", "Reward design", "Jobs", "Admin"):
            assert annotator.get_by_role("tab", name=name).count() == 0
        annotator.close()
