#!/usr/bin/env python3
"""Stylize-job throughput of `atelier worker` processes (issue 21): one API node started with
`serve --workers 0`, then 1 and 2 worker processes (each one stylize lane) on the same
PostgreSQL and S3 bucket; N stylize jobs of one side×side image each are submitted at once and
timed until the last one finishes. Also the same jobs on the embedded single process (SQLite +
folder, its in-process worker) as the baseline.

    source scripts/services.sh && start_postgres && start_s3
    python3 bench/scaleout.py --bin target/release/atelier [--jobs 24] [--side 512] [--model monet]

Needs ATELIER_TEST_POSTGRES and ATELIER_TEST_S3 (+ AWS_*) from scripts/services.sh. Standard
library only; prints a table (and --json)."""
import argparse, http.client, json, os, socket, statistics, subprocess, sys, tempfile, time, uuid

sys.path.insert(0, os.path.dirname(__file__))
from load import png, free_port  # noqa: E402


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    return r.status, r.read()


def multipart(parts):
    b = "scaleout-" + uuid.uuid4().hex
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{b}\r\n".encode()
        disp = f'Content-Disposition: form-data; name="{name}"'
        if filename:
            disp += f'; filename="{filename}"'
        out += (disp + "\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{b}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={b}"


def wait_ready(port, proc):
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.returncode}")
        try:
            if request(port, "GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not become ready")


def create_database(admin):
    """A fresh PostgreSQL database on the test server (Debian's psql); its URL."""
    name = "scaleout_" + uuid.uuid4().hex[:10]
    base = admin.rsplit("/", 1)[0]
    psql = None
    for d in sorted(os.listdir("/usr/lib/postgresql"), reverse=True):
        p = f"/usr/lib/postgresql/{d}/bin/psql"
        if os.path.exists(p):
            psql = p
            break
    subprocess.run([psql, admin, "-q", "-c", f"CREATE DATABASE {name}"], check=True)
    return f"{base}/{name}"


def run_jobs(port, jobs, side, model):
    body = png(side)
    spec = json.dumps({"type": "stylize", "model": model, "format": "jpg"}).encode()
    ids = []
    t0 = time.perf_counter()
    for i in range(jobs):
        data, ct = multipart([("spec", None, spec), ("image", f"p{i}.png", body)])
        st, r = request(port, "POST", "/v1/jobs", data, {"Content-Type": ct})
        assert st == 202, (st, r)
        ids.append(json.loads(r)["id"])
    pending = set(ids)
    while pending:
        for j in list(pending):
            st, r = request(port, "GET", f"/v1/jobs/{j}")
            s = json.loads(r)["status"]
            if s in ("succeeded", "failed", "cancelled"):
                assert s == "succeeded", r
                pending.discard(j)
        time.sleep(0.2)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/atelier")
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--model", default="monet")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    admin, s3 = os.environ.get("ATELIER_TEST_POSTGRES"), os.environ.get("ATELIER_TEST_S3")
    if not admin or not s3:
        raise SystemExit("needs ATELIER_TEST_POSTGRES and ATELIER_TEST_S3: source scripts/services.sh && start_postgres && start_s3")
    common = ["--max-active-jobs", "100000", "--rate-limit-per-minute", "1000000"]
    rows = []
    procs = []
    try:
        # Baseline: the embedded single process (SQLite + folder), one in-process stylize lane.
        data = tempfile.mkdtemp(prefix="atelier-scaleout-")
        port = free_port()
        srv = subprocess.Popen([a.bin, "serve", "--port", str(port), "--data", data, "--train-workers", "0",
                                "--stylize-workers", "1", *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(srv)
        wait_ready(port, srv)
        run_jobs(port, 2, a.side, a.model)  # warm-up: weights packed
        secs = run_jobs(port, a.jobs, a.side, a.model)
        rows.append({"setup": "serve (SQLite + folder, 1 in-process lane)", "workers": 1, "seconds": secs,
                     "jobs_per_s": a.jobs / secs})
        srv.terminate(); srv.wait()
        for n in (1, 2):
            db = create_database(admin)
            blobs = f"{s3}/scaleout-{uuid.uuid4().hex[:8]}"
            storage = ["--database", db, "--blobs", blobs]
            port = free_port()
            api = subprocess.Popen([a.bin, "serve", "--port", str(port), "--data", tempfile.mkdtemp(prefix="atelier-api-"),
                                    "--workers", "0", *storage, *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(api)
            wait_ready(port, api)
            ws = []
            for i in range(n):
                w = subprocess.Popen([a.bin, "worker", "--lanes", "stylize", "--data", tempfile.mkdtemp(prefix="atelier-w-"),
                                      *storage], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(w); ws.append(w)
            time.sleep(2)
            run_jobs(port, 2 * n, a.side, a.model)  # warm-up: each worker packs its weights
            secs = run_jobs(port, a.jobs, a.side, a.model)
            rows.append({"setup": f"serve --workers 0 + {n} × atelier worker (PostgreSQL + S3)", "workers": n,
                         "seconds": secs, "jobs_per_s": a.jobs / secs})
            for p in [api, *ws]:
                p.terminate(); p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    out = {"cpu": cpu, "cores": os.cpu_count(), "jobs": a.jobs, "side": a.side, "model": a.model, "rows": rows}
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{a.jobs} stylize jobs of one {a.side}² image ({a.model}), {cpu}, {os.cpu_count()} cores")
        for r in rows:
            print(f"  {r['setup']:<58} {r['seconds']:6.1f} s  {r['jobs_per_s']:.2f} jobs/s")


if __name__ == "__main__":
    main()
