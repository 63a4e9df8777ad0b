"""A throwaway PostgreSQL server on loopback, for the tests, the benchmarks and CI.

Standard library only, so CI can run it before the virtualenv exists::

    python3 tests/pg.py start DIR     # initdb + start in DIR; prints the URL of its "postgres" db
    python3 tests/pg.py stop DIR

It uses the Debian packages' binaries (``/usr/lib/postgresql/<n>/bin``) or ``initdb``/``pg_ctl``
on PATH. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(created by the Debian package) with DIR owned by it. It listens on 127.0.0.1 only, on a free
port, with a unix socket in DIR and ``trust`` authentication: for tests, never for production.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER = "rewardlab"
ENV_URL = "REWARDLAB_TEST_PG_URL"  # a server started beforehand (CI); the tests then start none


class NoPostgres(RuntimeError):
    """No server can be started here (binaries missing, or nobody to run it as)."""


def find_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise NoPostgres(f"{name} not found (install Debian's postgresql package, or set {ENV_URL})")


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        raise NoPostgres("running as root without runuser: cannot start PostgreSQL as another user")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise NoPostgres("running as root and no 'postgres' user to run the server as") from None
    return ["runuser", "-u", "postgres", "--", *cmd]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(folder: Path, fast: bool = True) -> str:
    """initdb in ``folder`` (created; must not hold a cluster yet) and start; the admin URL.

    ``fast`` turns off fsync: right for tests, whose databases die with the run; a benchmark that
    measures commits passes ``fast=False``.
    """
    folder = Path(folder).resolve()
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    r = subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
                                        "--no-sync"]),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise NoPostgres(f"initdb failed: {(r.stderr or r.stdout).strip()[-500:]}")
    port = _free_port()
    opts = [f"-p {port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={folder}",
            "-c max_connections=300"]
    if fast:
        opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    r = subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w",
                                        "-t", "60", "-o", " ".join(opts), "start"]),
                       capture_output=True, text=True)
    if r.returncode != 0:
        log = (folder / "server.log").read_text(errors="replace")[-800:] if (folder / "server.log").exists() else ""
        raise NoPostgres(f"pg_ctl start failed: {(r.stderr or r.stdout).strip()[-300:]} {log}")
    url = f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    (folder / "url").write_text(url + "\n")
    return url


def stop(folder: Path) -> None:
    data = Path(folder).resolve() / "data"
    if not (data / "postmaster.pid").exists():
        return
    subprocess.run(_as_server_user([find_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                   capture_output=True, text=True)


def database_url(admin_url: str, name: str) -> str:
    """The URL of database ``name`` on the same server as ``admin_url``."""
    head, _, _ = admin_url.rpartition("/")
    return f"{head}/{name}"


def _connect(admin_url: str):
    import psycopg

    return psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def create_database(admin_url: str, name: str) -> str:
    with _connect(admin_url) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with _connect(admin_url) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: python3 tests/pg.py start|stop DIR")
    try:
        if sys.argv[1] == "start":
            print(start(Path(sys.argv[2])))
        else:
            stop(Path(sys.argv[2]))
    except NoPostgres as exc:
        sys.exit(f"pg.py: {exc}")
