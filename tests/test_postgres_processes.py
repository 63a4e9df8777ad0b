"""Two real app processes (``python -m rewardlab.cli annotate --db URL --port P``) on one PostgreSQL
database: what is shared (sign-ins) and what Gradio keeps per process (its queue: why the proxy
must be sticky), and the nginx file of docs/deploy.md, as printed there, in front of them with TLS
and concurrent annotators."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import annotators  # noqa: E402 - bench/annotators.py: build_db, start_app, drive, check_db


@pytest.fixture(scope="module")
def two_apps(pg_admin_url, tmp_path_factory):
    """(db url, [url1, url2], annotator names): 120 pairs, overlap 2, 12 accounts, 2 processes."""
    from conftest import fresh_pg_database

    tmp = tmp_path_factory.mktemp("two-apps")
    with fresh_pg_database(pg_admin_url) as db:
        names = annotators.build_db(db, comparisons=120, overlap=2, annotators=12)

        def start(k):
            port = annotators.free_port()
            return annotators.start_app(annotators.annotate_cmd(db, port, tmp), port, tmp / f"app{k}.log")

        with ThreadPoolExecutor(2) as pool:
            started = list(pool.map(start, range(2)))
        try:
            yield db, [u for _, u in started], names
        finally:
            for proc, _ in started:
                annotators.stop_server(proc)


def test_sign_in_holds_on_every_process_but_a_queued_call_only_on_its_own(two_apps):
    _, (a, b), names = two_apps
    login = httpx.post(a + "login", data={"username": names[0], "password": annotators.PASSWORD})
    assert login.status_code == 200, login.text
    cookies = dict(login.cookies)
    # Sessions live in the database (annotate/security.py): the other process accepts the sign-in.
    assert httpx.get(b + "config", cookies=cookies).status_code == 200
    config = httpx.get(a + "config", cookies=cookies).json()
    [fn] = [d["id"] for d in config["dependencies"] if d.get("api_name") == "next_pair"]

    def call(stream_at: str) -> str:
        """Join Gradio's queue at process a, read the event stream at ``stream_at``; the first
        message that is neither an estimate nor a start."""
        session = f"s{time.monotonic_ns()}"
        join = httpx.post(a + "gradio_api/queue/join", cookies=cookies, json={
            "data": [], "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None})
        assert join.status_code == 200, join.text
        try:
            with httpx.stream("GET", f"{stream_at}gradio_api/queue/data?session_hash={session}",
                              cookies=cookies, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data:") and '"estimation"' not in line and '"process_starts"' not in line:
                        return line
        except httpx.RemoteProtocolError:
            pass  # the other process closes the stream after its error message
        return ""

    # The queue (a join, then an event stream carrying the result) lives in one process's memory:
    # the stream must reach the process that took the join. Hence sticky sessions (docs/deploy.md).
    assert '"session_not_found":true' in call(b).replace(" ", "")
    assert '"process_completed"' in call(a)


def _nginx_conf(tmp: Path, listen_port: int, backends: list[str], cert: Path, key: Path) -> Path:
    """docs/deploy.md's nginx file, with this test's ports, certificate and paths."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    block = re.search(r"<!-- nginx.conf begin -->\s*```nginx\n(.*?)```\s*<!-- nginx.conf end -->", doc, re.S)
    assert block, "docs/deploy.md lost its nginx block"
    conf = block.group(1)
    servers = re.findall(r"server 127\.0\.0\.1:\d+ ", conf)
    assert len(servers) == 2
    for old, url in zip(servers, backends):
        conf = conf.replace(old, "server " + url.removeprefix("http://").rstrip("/") + " ", 1)
    conf = re.sub(r"server \{\n    listen 80;.*?\n\}\n", "", conf, flags=re.S)  # no port 80 here
    conf = conf.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;")
    conf = re.sub(r"ssl_certificate .*;", f"ssl_certificate {cert};", conf)
    conf = re.sub(r"ssl_certificate_key .*;", f"ssl_certificate_key {key};", conf)
    conf = conf.replace("/var/log/nginx/rewardlab.access.log", str(tmp / "access.log"))
    main = (f"worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "events { worker_connections 512; }\n"
            + f"http {{\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n"
            + f"  fastcgi_temp_path {tmp}/fcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n"
            + conf + "\n}\n")
    path = tmp / "nginx.conf"
    path.write_text(main)
    return path


def test_behind_the_documented_nginx_with_tls(two_apps, tmp_path, monkeypatch):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None or shutil.which("openssl") is None:
        pytest.skip("nginx or openssl not installed (apt-get install nginx-light openssl)")
    db, backends, names = two_apps
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port = annotators.free_port()
    conf = _nginx_conf(tmp_path, port, backends, cert, key)
    check = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = f"https://127.0.0.1:{port}/"
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                httpx.get(url + "config", verify=str(cert))
                break
            except httpx.TransportError:
                time.sleep(0.1)
        # The certificate verified for real, in the client processes too (ssl.create_default_context).
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        fig = annotators.drive(url, names, seconds=6.0, think=0.1, client_procs=2, seed=3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()
    acks = fig.pop("acks")
    assert fig["errors"] == 0, fig["error_samples"]
    assert len(acks) > 0
    # every sticky session went to one process, and both processes served
    upstreams = defaultdict(set)
    for line in (tmp_path / "access.log").read_text().splitlines():
        up = re.search(r"upstream=(\S+) sticky=(\S+)", line)
        if up and "/gradio_api/" in line:
            upstreams[up.group(2)].add(up.group(1))
    assert upstreams and all(len(v) == 1 for v in upstreams.values()), dict(upstreams)
    served = set().union(*upstreams.values())
    assert {b.removeprefix("http://").rstrip("/") for b in backends} == served
    result = annotators.check_db(db, acks, names)
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["over_overlap"] == 0, result
    assert result["stored"] == result["acknowledged"] == len(acks), result
