"""The annotation app in a real browser (Debian chromium through Playwright): login, keyboard
labelling, hostile model output shown as text and never run, admin tab only for admins."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from annotate.store import Annotator, Assignment, Label
from test_app import HOSTILE_A, HOSTILE_B, PASSWORD, fill, running

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT = Path("/tmp/rewardlab_app.png")
SHOWN = {("A", False): "A", ("A", True): "B", ("B", False): "B", ("B", True): "A"}


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"{CHROMIUM} is absent: install it with `apt-get install -y chromium` (or `make browser`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=ARGS)
        yield b
        b.close()


def login(browser, url: str, name: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").first.fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#rl-progress", timeout=20_000)
    page.wait_for_function("() => /done \\d+/.test(document.querySelector('#rl-progress').innerText)")
    return page


def shown_a(page) -> str:
    return page.input_value("#rl-response-a textarea")


def press_and_wait(page, key: str) -> None:
    before = shown_a(page)
    page.keyboard.press(key)
    page.wait_for_function(
        "(prev) => document.querySelector('#rl-response-a textarea').value !== prev", arg=before,
        timeout=10_000,
    )


def test_keyboard_labelling_and_hostile_output(browser, store):
    ids = fill(store, n=4)  # the last comparison holds <script> and onerror in its responses
    with running(store) as url:
        page = login(browser, url, "alice")
        assert page.get_by_role("tab", name="Admin").count() == 0  # annotators get no admin tab

        # Keys typed into the note are text, not shortcuts.
        page.locator("#rl-note textarea, #rl-note input").first.type("1 2 u")
        page.wait_for_timeout(300)
        assert "done 0" in page.inner_text("#rl-progress")
        page.locator("#rl-note textarea, #rl-note input").first.fill("")
        page.locator("h1").first.click()  # focus back on the page

        for key in "123":
            press_and_wait(page, key)
        assert "done 3" in page.inner_text("#rl-progress")
        with store.read() as s:
            rows = s.execute(
                select(Label.choice, Assignment.swapped)
                .join(Assignment, (Assignment.comparison_id == Label.comparison_id)
                      & (Assignment.annotator_id == Label.annotator_id))
                .order_by(Label.id)
            ).all()
        assert [c if c == "tie" else SHOWN[(c, sw)] for c, sw in rows] == ["A", "B", "tie"]

        # The fourth pair is the hostile one: shown literally, never executed.
        texts = {shown_a(page), page.input_value("#rl-response-b textarea")}
        assert texts == {HOSTILE_A, HOSTILE_B}
        assert "<script>" in (HOSTILE_A if HOSTILE_A in texts else "")
        assert "<b>France</b>" in page.inner_text("#rl-prompt")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # Last pair done: the end message, label buttons off; undo brings the pair back.
        page.keyboard.press("4")
        page.wait_for_selector("#rl-done", state="visible")
        assert "All done" in page.inner_text("#rl-done")
        assert page.locator("#rl-a").is_disabled()
        page.keyboard.press("u")
        page.wait_for_function("() => document.querySelector('#rl-response-a textarea')?.value.length > 0")
        assert {shown_a(page), page.input_value("#rl-response-b textarea")} == {HOSTILE_A, HOSTILE_B}
        assert "done 3" in page.inner_text("#rl-progress")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        page.close()

        admin = login(browser, url, "root")
        admin.get_by_role("tab", name="Admin").click()
        admin.wait_for_function(
            "() => document.querySelector('#rl-admin-table')?.innerText.includes('alice')")
        assert "Comparisons 4 · complete 3 · labels 3" in admin.inner_text("#rl-admin-summary")
        admin.screenshot(path=str(SCREENSHOT.with_name("rewardlab_admin.png")), full_page=True)
        admin.close()
    with store.read() as s:
        alice = s.scalar(select(Annotator.id).where(Annotator.name == "alice"))
        assert s.query(Label).filter(Label.annotator_id == alice).count() == 3
    assert len(ids) == 4
