"""Shared fixtures: tiny real models built on the fly, a temporary store, the shared data.

The ``store`` fixture is a fresh SQLite file; a test module that sets ``STORE_ENGINES =
("sqlite", "postgresql")`` runs each of its tests on both, the PostgreSQL one in a fresh database
of a throwaway server (``tests/pg.py``; the one named by ``$REWARDLAB_TEST_PG_URL`` when set, as
CI does). Where no server can be started those cases skip and say why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see rewardlab/cli.py
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama (2 layers, hidden 32) with a byte-level BPE tokenizer, pad == eos like SmolLM2."""
    from tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), seed=0)


def pytest_generate_tests(metafunc):
    engines = getattr(metafunc.module, "STORE_ENGINES", ("sqlite",))
    if engines != ("sqlite",) and ("store" in metafunc.fixturenames or "db_url" in metafunc.fixturenames):
        name = "store" if "store" in metafunc.fixturenames else "db_url"
        metafunc.parametrize(name, engines, indirect=True)


@pytest.fixture(scope="session")
def pg_server():
    """The admin URL of a PostgreSQL server for this test run, or the reason there is none."""
    import pg

    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield None, "psycopg is not installed (pip install -e '.[postgres]')"
        return
    if os.environ.get(pg.ENV_URL):
        yield os.environ[pg.ENV_URL], None
        return
    import shutil
    import tempfile

    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="rewardlab-pg-"))
    try:
        url = pg.start(folder)
    except pg.NoPostgres as exc:
        shutil.rmtree(folder, ignore_errors=True)
        yield None, str(exc)
        return
    try:
        yield url, None
    finally:
        pg.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(pg_server) -> str:
    url, why = pg_server
    if url is None:
        pytest.skip(f"PostgreSQL tests skipped: no server could be started ({why})")
    return url


def fresh_pg_database(admin_url: str):
    """Context: the URL of a new, empty PostgreSQL database, dropped afterwards."""
    import contextlib
    import uuid

    import pg

    @contextlib.contextmanager
    def cm():
        name = "t_" + uuid.uuid4().hex[:12]
        url = pg.create_database(admin_url, name)
        try:
            yield url
        finally:
            pg.drop_database(admin_url, name)

    return cm()


@pytest.fixture
def pg_database(pg_admin_url):
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    with fresh_pg_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def db_url(request, tmp_path):
    """The URL of a fresh, empty database: SQLite, or PostgreSQL where the module asks for it."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return request.getfixturevalue("pg_database")
    return "sqlite:///" + str(tmp_path / "rewardlab.db")


@pytest.fixture
def store(request, tmp_path):
    from annotate.store import Store

    if getattr(request, "param", "sqlite") == "postgresql":
        url = request.getfixturevalue("pg_database")
    else:
        url = "sqlite:///" + str(tmp_path / "rewardlab.db")
    s = Store(url)
    yield s
    s.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lives beside the repo as ../shared/data)")
    return SHARED_DATA
