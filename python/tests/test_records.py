"""The prediction log against real databases: SQLite (embedded) and PostgreSQL (a real server
this suite starts on loopback; scripts/test.sh installs it). Rows for REST and gRPC requests,
sampling, size caps, feedback joined for quality numbers that equal a hand computation,
pagination, SQL injection in every filter, durability across `kill -9` in durable mode, and
no loss across a database outage in async mode."""

import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import ROOT, KilnServer
from conftest import metric as metric_total


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth), run as the `postgres` user
    when this process is root (initdb refuses root)."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            pytest.skip("PostgreSQL server binaries not found (scripts/test.sh installs them: apt-get install postgresql)")
        self.bin = os.path.dirname(bins[-1])
        # Outside pytest's private (0700, root-owned) tmp tree: the postgres user must reach it.
        base = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
        self.dir = base / "pgdata"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(base, "postgres")
        self.run("initdb", "-D", str(self.dir), "--auth=trust", "-U", "postgres", "--no-sync")
        self.start()
        self.count = 0

    def run(self, tool, *args):
        subprocess.run(self.as_user + [os.path.join(self.bin, tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self):
        self.run("pg_ctl", "-D", str(self.dir), "-w", "-l", str(self.dir.parent / "pg.log"), "-o",
                 f"-p {self.port} -k {self.dir.parent} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self):
        self.run("pg_ctl", "-D", str(self.dir), "-w", "-m", "fast", "stop")

    def remove(self):
        shutil.rmtree(self.dir.parent, ignore_errors=True)

    def new_database(self):
        self.count += 1
        name = f"kiln{self.count}"
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres():
    pg = Postgres()
    yield pg
    pg.stop()
    pg.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'records.sqlite'}"
    return request.getfixturevalue("postgres").new_database()


def repository(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud")
    variants = {
        "fraud_sampled": '[records]\nlog = "sampled"\nrate = 0.3\n',
        "fraud_none": '[records]\nlog = "none"\n',
        "fraud_capped": '[records]\nmax_bytes = 100\noutputs = ["label"]\n',
    }
    for name, config in variants.items():
        shutil.copytree(ROOT / "examples" / "models" / "fraud" / "1", repo / name / "1")
        (repo / name / "config.toml").write_text(config)
    return repo


def start(tmp_path, database, mode="async"):
    return KilnServer(repository(tmp_path), extra_args=["--records", database, "--records-mode", mode])


def rows(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 30)).astype(np.float32)


def post(server, path, body, timeout=30):
    request = urllib.request.Request(f"http://{server.url}{path}", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def get(server, path):
    try:
        with urllib.request.urlopen(f"http://{server.url}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def infer(server, model, x, key=None):
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if key is not None:
        body["id"] = key
    return post(server, f"/v2/models/{model}/infer", body)


def all_rows(server, query=""):
    out, cursor = [], None
    while True:
        path = f"/v1/predictions?limit=1000{query}" + (f"&cursor={cursor}" if cursor else "")
        status, page = get(server, path)
        assert status == 200, page
        out += page["predictions"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


def wait_for_rows(server, query, n, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        got = all_rows(server, query)
        if len(got) >= n:
            return got
        time.sleep(0.1)
    return all_rows(server, query)


def test_rest_and_grpc_requests_are_logged(tmp_path, database):
    server = start(tmp_path, database)
    try:
        x = rows(2)
        status, body, headers = infer(server, "fraud", x, key="rest-1")
        assert status == 200, body
        request_id = headers["kiln-request-id"]
        client = grpcclient.InferenceServerClient(url=server.grpc_url)
        inp = grpcclient.InferInput("input", [1, 30], "FP32")
        inp.set_data_from_numpy(x[:1])
        client.infer("fraud", [inp], request_id="grpc-1")
        got = {r["client_key"]: r for r in wait_for_rows(server, "&model=fraud", 2)}
        assert set(got) == {"rest-1", "grpc-1"}
        assert (got["rest-1"]["protocol"], got["grpc-1"]["protocol"]) == ("rest", "grpc")
        assert got["rest-1"]["id"] == request_id and got["rest-1"]["rows"] == 2
        status, one = get(server, f"/v1/predictions/{request_id}")
        assert status == 200, one
        np.testing.assert_allclose(np.array(one["inputs"]["input"]["data"]).reshape(2, 30), x, rtol=1e-6)
        labels = [o for o in body["outputs"] if o["name"] == "label"][0]["data"]
        assert one["outputs"]["label"]["data"] == labels
        assert one["labels"] == [str(v) for v in labels]
        # A refused request is logged as an error with the reason.
        status, _, _ = infer(server, "fraud", rows(1)[:, :3], key="bad-1")
        assert status == 400
        (bad,) = wait_for_rows(server, "&key=bad-1", 1)
        assert bad["outcome"] == "error" and "expected shape [-1, 30]" in bad["error"]
        assert get(server, "/v1/predictions/nope")[0] == 404
    finally:
        assert server.stop() == 0


def test_sampling_none_and_size_caps(tmp_path, database):
    server = start(tmp_path, database)
    try:
        x = rows(1)
        for i in range(200):
            assert infer(server, "fraud_sampled", x)[0] == 200
            assert infer(server, "fraud_none", x)[0] == 200
        assert infer(server, "fraud_capped", rows(4))[0] == 200
        time.sleep(0.5)
        sampled = len(all_rows(server, "&model=fraud_sampled"))
        assert 25 <= sampled <= 100, f"rate 0.3 of 200 requests logged {sampled}"
        assert all_rows(server, "&model=fraud_none") == []
        (capped,) = all_rows(server, "&model=fraud_capped&tensors=true")
        assert capped["truncated"] is True
        assert capped["inputs"] == {"input": {"datatype": "FP32", "shape": [4, 30]}}, "past the cap: shapes only"
        assert list(capped["outputs"]) == ["label"], "only the kept outputs"
    finally:
        assert server.stop() == 0


def test_feedback_and_quality_equal_a_hand_computation(tmp_path, database):
    server = start(tmp_path, database)
    try:
        x = rows(40, seed=3)
        predicted = []
        for i in range(40):
            status, body, _ = infer(server, "fraud", x[i:i + 1], key=f"q-{i}")
            assert status == 200
            predicted.append(str([o for o in body["outputs"] if o["name"] == "label"][0]["data"][0]))
        truth = [p if i % 4 else str(1 - int(p)) for i, p in enumerate(predicted)]  # every 4th wrong
        logged = {r["client_key"]: r for r in wait_for_rows(server, "&model=fraud", 40)}
        for i in range(30):  # feedback for the first 30 only; half by kiln's id, half by key
            body = {"key": f"q-{i}"} if i % 2 else {"id": logged[f"q-{i}"]["id"]}
            status, answer, _ = post(server, "/v1/feedback", {**body, "label": int(truth[i])})
            assert status == 201 and answer["matched"], answer
        status, q = get(server, "/v1/models/fraud/quality?bucket=86400")
        assert status == 200, q
        total = q["total"]
        pairs = [(truth[i], predicted[i]) for i in range(30)]
        assert total["requests"] == 40 and total["errors"] == 0 and total["labeled_rows"] == 30
        assert total["accuracy"] == pytest.approx(sum(t == p for t, p in pairs) / 30)
        for cls in {c for pair in pairs for c in pair}:
            tp = sum(t == p == cls for t, p in pairs)
            predicted_n = sum(p == cls for _, p in pairs)
            actual_n = sum(t == cls for t, _ in pairs)
            score = total["classes"][cls]
            assert score["precision"] == (pytest.approx(tp / predicted_n) if predicted_n else None)
            assert score["recall"] == (pytest.approx(tp / actual_n) if actual_n else None)
            assert score["support"] == actual_n
        confusion = {(c["true"], c["predicted"]): c["count"] for c in total["confusion"]}
        assert confusion == {k: pairs.count(k) for k in set(pairs)}
        latencies = sorted(r["latency_us"] for r in logged.values())
        assert total["latency_us"]["p50"] == latencies[int(np.ceil(0.5 * 40)) - 1]
        assert total["latency_us"]["p99"] == latencies[int(np.ceil(0.99 * 40)) - 1]
        status, one = get(server, f"/v1/predictions/{logged['q-1']['id']}")
        assert one["feedback"][0]["labels"] == [truth[1]]
        # Feedback that names no prediction, or carries no label, is refused precisely.
        assert post(server, "/v1/feedback", {"label": 1})[0] == 400
        assert post(server, "/v1/feedback", {"key": "q-1"})[0] == 400
        assert post(server, "/v1/feedback", {"key": "q-1", "label": {"x": 1}})[0] == 400
        assert post(server, "/v1/feedback", {"key": "never-sent", "label": 1})[1]["matched"] is False
    finally:
        assert server.stop() == 0


def test_feedback_that_does_not_fit_its_prediction_never_replaces_good_labels(tmp_path, database):
    """Labels are per row: a count that disagrees with the prediction's rows is a 400 naming both
    counts and leaves the earlier feedback in place; feedback that came before its prediction was
    logged (so it could not be checked) is kept but never scored."""
    server = start(tmp_path, database)
    try:
        status, body, _ = infer(server, "fraud", rows(2, seed=5), key="two-rows")
        assert status == 200
        predicted = [str(v) for v in [o for o in body["outputs"] if o["name"] == "label"][0]["data"]]
        [logged] = wait_for_rows(server, "&model=fraud", 1)
        status, answer, _ = post(server, "/v1/feedback", {"id": logged["id"], "labels": [int(p) for p in predicted]})
        assert status == 201 and answer["matched"] is True, answer
        for bad in ([1, 0, 1], [1], [0] * 1000):
            status, answer, _ = post(server, "/v1/feedback", {"id": logged["id"], "labels": bad})
            assert status == 400, answer
            assert answer["error"] == (f"feedback has {len(bad)} label(s); prediction '{logged['id']}' has 2 row(s): "
                                       "send one label per row")
        status, answer, _ = post(server, "/v1/feedback", {"key": "two-rows", "labels": [1, 0, 1]})
        assert status == 400 and "the predictions with key 'two-rows' has 2 row(s)" in answer["error"], answer
        status, q = get(server, "/v1/models/fraud/quality?bucket=86400")
        assert q["total"]["labeled_rows"] == 2 and q["total"]["accuracy"] == 1.0, q
        # Feedback for a prediction not logged yet cannot be checked: kept, and never scored when
        # its count turns out wrong; later valid feedback replaces earlier (newest wins).
        status, answer, _ = post(server, "/v1/feedback", {"key": "later", "labels": [1, 0, 1]})
        assert status == 201 and answer["matched"] is False
        assert infer(server, "fraud", rows(2, seed=6), key="later")[0] == 200
        wait_for_rows(server, "&model=fraud", 2)
        status, q = get(server, "/v1/models/fraud/quality?bucket=86400")
        assert q["total"]["labeled_rows"] == 2, q
        status, answer, _ = post(server, "/v1/feedback", {"id": logged["id"], "labels": [1 - int(p) for p in predicted]})
        assert status == 201
        status, q = get(server, "/v1/models/fraud/quality?bucket=86400")
        assert q["total"]["labeled_rows"] == 2 and q["total"]["accuracy"] == 0.0, q
        # A model the repository does not hold and the log never saw is a 404, not zeros.
        status, answer = get(server, "/v1/models/nope/quality")
        assert status == 404 and "unknown model 'nope'" in answer["error"], answer
    finally:
        assert server.stop() == 0


def test_pagination_and_hostile_filters(tmp_path, database):
    server = start(tmp_path, database)
    try:
        x = rows(1)
        for i in range(25):
            assert infer(server, "fraud", x, key=f"p-{i}")[0] == 200
        wait_for_rows(server, "&model=fraud", 25)
        seen, cursor, pages = [], None, 0
        while True:
            status, page = get(server, "/v1/predictions?model=fraud&limit=10" + (f"&cursor={cursor}" if cursor else ""))
            assert status == 200
            pages += 1
            seen += [r["id"] for r in page["predictions"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 25 and pages == 3
        hostile = ["x' OR '1'='1", "'; DROP TABLE predictions; --", "fraud\" OR 1=1 --", "%27%20OR%201%3D1"]
        for value in hostile:
            for field in ("model", "outcome", "key", "cursor"):
                status, body = get(server, f"/v1/predictions?{field}={urllib.parse.quote(value)}")
                assert status in (200, 400), (field, value, body)
                if status == 200:
                    assert body["predictions"] == [], (field, value)
            for field in ("version", "since", "until", "limit"):
                assert get(server, f"/v1/predictions?{field}={urllib.parse.quote(value)}")[0] == 400
            # Names no model holds: 404 (neither in the repository nor in the log), never a 5xx.
            status, body = get(server, f"/v1/models/{urllib.parse.quote(value, safe='')}/quality")
            assert status == 404 and body["error"].startswith("unknown model"), (value, body)
            assert get(server, f"/v1/predictions/{urllib.parse.quote(value, safe='')}")[0] == 404
        assert len(all_rows(server, "&model=fraud")) == 25, "the table is intact"
        assert get(server, "/v1/predictions?limit=5000")[0] == 400
        assert get(server, "/v1/predictions?colour=red")[0] == 400
    finally:
        assert server.stop() == 0


def test_openapi_document(tmp_path):
    server = start(tmp_path, f"sqlite:{tmp_path / 'r.sqlite'}")
    try:
        status, doc = get(server, "/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.")
        for path in ("/v1/predictions", "/v1/predictions/{id}", "/v1/feedback", "/v1/models/{model}/quality",
                     "/v2/models/{model}/infer"):
            assert path in doc["paths"], path
    finally:
        assert server.stop() == 0


def test_records_off(tmp_path):
    server = start(tmp_path, "off")
    try:
        status, body, headers = infer(server, "fraud", rows(1))
        assert status == 200 and "kiln-request-id" not in headers
        status, body = get(server, "/v1/predictions")
        assert status == 404 and "off" in body["error"]
    finally:
        assert server.stop() == 0


def load(server, n, ids, stop_after=None):
    """n requests from 8 threads; the kiln-request-id of every 200 goes into ids."""
    lock = threading.Lock()
    x = rows(1)

    def worker(k):
        for i in range(k, n, 8):
            try:
                status, _, headers = infer(server, "fraud", x, key=f"d-{i}")
            except OSError:
                return
            if status == 200:
                with lock:
                    ids.append(headers["kiln-request-id"])
                    if stop_after and len(ids) == stop_after:
                        server.proc.send_signal(signal.SIGKILL)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_durable_mode_survives_kill_9(tmp_path, database):
    server = start(tmp_path, database, mode="durable")
    ids = []
    try:
        load(server, 400, ids, stop_after=150)
    finally:
        if server.proc.poll() is None:  # the load failed before its kill -9: leave no server
            server.proc.kill()
    server.proc.wait(timeout=10)
    assert server.proc.returncode == -signal.SIGKILL
    assert len(ids) >= 150
    server.log.close()
    again = KilnServer(repository(tmp_path / "again"), extra_args=["--records", database])
    try:
        missing = [i for i in ids if get(again, f"/v1/predictions/{i}")[0] != 200]
        assert missing == [], f"{len(missing)} answered requests have no row after kill -9"
    finally:
        assert again.stop() == 0


def metric(server, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_async_mode_loses_nothing_across_an_outage(tmp_path, database, request):
    server = start(tmp_path, database)
    try:
        x = rows(1)
        if database.startswith("sqlite:"):
            # Another process takes the database's write lock.
            locker = sqlite3.connect(database.removeprefix("sqlite:"), timeout=10, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            resume = lambda: (locker.execute("COMMIT"), locker.close())  # noqa: E731
        else:
            pg = request.getfixturevalue("postgres")
            pg.stop()
            resume = pg.start
        started = time.time()
        for i in range(60):
            status, _, _ = infer(server, "fraud", x, key=f"o-{i}")
            assert status == 200, "predictions are served while the log's database is down"
        assert time.time() - started < 20
        deadline = time.time() + 10
        while (metric(server, "kiln_records_backlog") or 0) == 0 and time.time() < deadline:
            time.sleep(0.1)
        assert metric(server, "kiln_records_backlog") > 0, "the backlog gauge shows the waiting rows"
        resume()
        got = wait_for_rows(server, "&model=fraud", 60, seconds=30)
        assert sorted(r["client_key"] for r in got) == sorted(f"o-{i}" for i in range(60))
        assert (metric(server, "kiln_records_dropped_total") or 0) == 0
    finally:
        assert server.stop() == 0


def test_shutdown_flushes_the_log(tmp_path):
    path = tmp_path / "flush.sqlite"
    server = start(tmp_path, f"sqlite:{path}")
    for i in range(100):
        assert infer(server, "fraud", rows(1), key=f"s-{i}")[0] == 200
    assert server.stop() == 0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM predictions WHERE client_key LIKE 's-%'").fetchone()[0] == 100


def test_pipelines_are_logged_by_their_own_policy(tmp_path, database):
    repo = repository(tmp_path)
    for name in ("fraud_lr", "fraud_ensemble"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name)
    quiet = (ROOT / "examples" / "models" / "fraud_ensemble" / "pipeline.toml").read_text()
    (repo / "quiet_ensemble").mkdir()
    (repo / "quiet_ensemble" / "pipeline.toml").write_text(quiet + '\n[records]\nlog = "none"\n')
    (repo / "bad_policy").mkdir()
    (repo / "bad_policy" / "pipeline.toml").write_text(quiet + '\n[records]\nlabel = "nope"\n')
    server = KilnServer(repo, extra_args=["--records", database])
    try:
        x = rows(3)
        status, body, headers = infer(server, "fraud_ensemble", x, key="ens-1")
        assert status == 200, body
        assert infer(server, "quiet_ensemble", x, key="quiet-1")[0] == 200
        (row,) = wait_for_rows(server, "&model=fraud_ensemble", 1)
        assert row["id"] == headers["kiln-request-id"] and row["rows"] == 3
        assert row["labels"] == [str(v) for v in [o for o in body["outputs"] if o["name"] == "label"][0]["data"]]
        time.sleep(0.3)
        assert all_rows(server, "&model=quiet_ensemble") == []
        index = {r["name"]: r for r in json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://{server.url}/v2/repository/index", method="POST")).read())}
        assert "[records] label names 'nope'" in index["bad_policy"]["reason"]
    finally:
        assert server.stop() == 0


def bench_load(server, requests, concurrency=16):
    """Real load from kiln's own load generator (REST JSON, random rows)."""
    out = subprocess.run(
        [os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln")), "bench", "fraud", "--url", server.url,
         "--protocol", "rest-json", "-n", str(requests), "-c", str(concurrency), "--warmup", "0", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_retention_keeps_the_log_under_its_size_cap(tmp_path, database):
    cap = 2 * 1024 * 1024
    server = KilnServer(repository(tmp_path), extra_args=["--records", database, "--records-max-bytes", str(cap)])
    try:
        report = bench_load(server, 12_000)
        assert report["errors"] == 0, report
        newest = [f"newest-{i}" for i in range(50)]
        for key in newest:
            assert infer(server, "fraud", rows(1), key=key)[0] == 200
        for key in newest:
            assert wait_for_rows(server, f"&key={key}", 1), f"{key} was deleted or never written"
        assert metric_total(server.metrics(), "kiln_records_retention_deleted_total", reason="size") > 0
        kept = len(all_rows(server))
        assert kept < 12_000, f"{kept} rows kept under a {cap}-byte cap"
        if database.startswith("sqlite:"):
            path = database.split(":", 1)[1]
            assert os.path.getsize(path) <= cap, f"the SQLite file is {os.path.getsize(path)} bytes, over {cap}"
    finally:
        assert server.stop() == 0


def test_retention_deletes_rows_past_their_age(tmp_path, database):
    server = KilnServer(repository(tmp_path), extra_args=["--records", database, "--records-retention", "2s"])
    try:
        for i in range(20):
            assert infer(server, "fraud", rows(1), key=f"old-{i}")[0] == 200
        assert len(wait_for_rows(server, "&model=fraud", 20)) >= 20
        time.sleep(3)
        assert infer(server, "fraud", rows(1), key="fresh")[0] == 200
        deadline = time.time() + 20
        while time.time() < deadline and any(all_rows(server, f"&key=old-{i}") for i in (0, 19)):
            time.sleep(0.2)
        assert not all_rows(server, "&key=old-0") and not all_rows(server, "&key=old-19"), "old rows kept"
        assert wait_for_rows(server, "&key=fresh", 1)
        assert metric_total(server.metrics(), "kiln_records_retention_deleted_total", reason="age") >= 20
    finally:
        assert server.stop() == 0
