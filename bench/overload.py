#!/usr/bin/env python3
"""Overload and soak figures (issue 20): `POST /v1/stylize` and the training-job API at 1×, 2×
and 4× the server's capacity, then the server's RSS, open files and temporary files against
their values before the load.

    python3 bench/overload.py --bin target/release/atelier [--seconds 60] [--side 512] [--check]

Capacity of the stylize endpoint is `--max-concurrent` (images stylized at once); k× capacity
is k×max_concurrent clients sending back to back (a 429 is retried after its Retry-After/20).
Capacity of the job API is `--max-active-jobs` per key; k× sends k×that many training jobs
per round and cancels the admitted ones. With --check the exit status is 1 unless: only
200/202/429 answers, p99 of the admitted stylizes ≤ 3× their unloaded median, RSS after the
run (which ends with --trainings training jobs run to completion) within 10 % of before, file
descriptors and temporary files back to their baseline.
Standard library only."""
import argparse, http.client, json, os, socket, statistics, subprocess, sys, tempfile, threading, time, zlib, struct

sys.path.insert(0, os.path.dirname(__file__))
from load import png, free_port  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def fds(pid):
    """Open file descriptors, without the SQLite pool's (it opens up to 4 connections lazily,
    3 files each, and keeps them: growth there is the pool warming up, not a leak)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "atelier.db" not in target:
            n += 1
    return n


def temp_files(data):
    n = 0
    for root, _, files in os.walk(data):
        n += sum(1 for f in files if "#" in f or f.startswith("import-") or f.endswith(".part"))
    return n


def request(port, method, path, body=None, headers=None, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body, headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Retry-After"), data


def multipart(parts):
    b = "overload-boundary"
    out = b""
    for name, fname, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{fname}"' if fname else "")
        out += f"--{b}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def stylize_load(port, path, body, clients, seconds):
    lat, statuses, lock = [], {}, threading.Lock()
    stop_at = time.time() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.time() < stop_at:
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body)
                resp = conn.getresponse(); resp.read()
            except OSError:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                with lock:
                    statuses["connection error"] = statuses.get("connection error", 0) + 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    lat.append(dt)
            if resp.status == 429:
                time.sleep(float(resp.getheader("Retry-After", "1")) / 20)

    ts = [threading.Thread(target=client) for _ in range(clients)]
    [t.start() for t in ts]; [t.join() for t in ts]
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    return {"clients": clients, "ok": len(lat), "statuses": statuses, "p50_ms": round(q(0.5)), "p99_ms": round(q(0.99))}


def jobs_load(port, dataset, per_round, rounds, tag):
    statuses = {}
    for r in range(rounds):
        admitted = []
        lock = threading.Lock()

        def one(i):
            spec = {"type": "train", "dataset": dataset, "name": f"{tag}r{r}x{i}", "steps": 50, "size": 32,
                    "family": "cyclegan", "net_g": "light", "ngf": 8, "ndf": 8}
            st, _, data = request(port, "POST", "/v1/jobs", json.dumps(spec), {"Content-Type": "application/json"})
            with lock:
                statuses[st] = statuses.get(st, 0) + 1
                if st == 202:
                    admitted.append(json.loads(data)["id"])

        ts = [threading.Thread(target=one, args=(i,)) for i in range(per_round)]
        [t.start() for t in ts]; [t.join() for t in ts]
        for jid in admitted:
            st, _, _ = request(port, "POST", f"/v1/jobs/{jid}/cancel")
            statuses[f"cancel {st}"] = statuses.get(f"cancel {st}", 0) + 1
        # Wait until the cancelled jobs have stopped (they count as active until then).
        for _ in range(600):
            st, _, data = request(port, "GET", "/v1/jobs")
            if all(j["status"] not in ("queued", "running") for j in json.loads(data)["jobs"]):
                break
            time.sleep(0.1)
    return statuses


def complete_trainings(port, pid, n, side, steps):
    """Runs n training jobs to the end, one after the other (the default family and networks
    at `side`, `steps` steps), on a dataset of 4 + 4 images of side²; returns their statuses and
    the server's RSS after each."""
    parts = [(d, f"{d}{i}.png", png(side)) for d in "ab" for i in range(4)]
    body, ct = multipart(parts)
    st, _, d = request(port, "POST", "/v1/datasets?name=soak", body, {"Content-Type": ct})
    assert st == 201, (st, d)
    dataset = json.loads(d)["id"]
    done = []
    for i in range(n):
        spec = {"type": "train", "dataset": dataset, "name": f"soak{i}", "steps": steps, "size": side}
        st, _, d = request(port, "POST", "/v1/jobs", json.dumps(spec), {"Content-Type": "application/json"})
        assert st == 202, (st, d)
        jid = json.loads(d)["id"]
        while True:
            st, _, d = request(port, "GET", f"/v1/jobs/{jid}")
            job = json.loads(d)
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(1)
        time.sleep(2)
        done.append((job["status"], round(rss_mb(pid))))
    return done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/atelier")
    ap.add_argument("--model", default="ukiyoe")
    ap.add_argument("--seconds", type=float, default=60, help="per load level")
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--max-concurrent", type=int, default=1)
    ap.add_argument("--max-active-jobs", type=int, default=4)
    ap.add_argument("--trainings", type=int, default=3,
                    help="training jobs run to completion after the load (RSS must come back after them too)")
    ap.add_argument("--training-side", type=int, default=128)
    ap.add_argument("--training-steps", type=int, default=100)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    data = tempfile.mkdtemp(prefix="atelier-overload-")
    port = free_port()
    srv = subprocess.Popen([a.bin, "-q", "serve", "--port", str(port), "--data", data,
                            "--max-concurrent", str(a.max_concurrent), "--max-active-jobs", str(a.max_active_jobs),
                            "--rate-limit-per-minute", "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {"side": a.side, "max_concurrent": a.max_concurrent, "seconds_per_level": a.seconds}
    try:
        for _ in range(600):
            try:
                if request(port, "GET", "/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        body = png(a.side)
        path = f"/v1/stylize?model={a.model}&format=jpg&max_side={a.side}"
        # Warm-up (weights packed, thumbnails made), then the unloaded median.
        for _ in range(3):
            assert request(port, "POST", path, body)[0] == 200
        unloaded = []
        for _ in range(15):
            t0 = time.perf_counter(); st, _, _ = request(port, "POST", path, body); unloaded.append(time.perf_counter() - t0)
            assert st == 200, st
        out["unloaded_median_ms"] = round(statistics.median(unloaded) * 1000)
        zipped, ct = multipart([("a", "a.png", png(32)), ("b", "b.png", png(32))])
        st, _, d = request(port, "POST", "/v1/datasets?name=load", zipped, {"Content-Type": ct})
        assert st == 201, (st, d)
        dataset = json.loads(d)["id"]
        time.sleep(2)
        out["before"] = {"rss_mb": round(rss_mb(srv.pid)), "fds": fds(srv.pid), "temp_files": temp_files(data)}
        out["stylize"] = [stylize_load(port, path, body, k * a.max_concurrent, a.seconds) for k in (1, 2, 4)]
        out["jobs"] = {f"{k}x": jobs_load(port, dataset, k * a.max_active_jobs, 3, f"k{k}") for k in (1, 2, 4)}
        out["trainings"] = complete_trainings(port, srv.pid, a.trainings, a.training_side, a.training_steps)
        time.sleep(5)
        out["after"] = {"rss_mb": round(rss_mb(srv.pid)), "fds": fds(srv.pid), "temp_files": temp_files(data)}
    finally:
        srv.terminate(); srv.wait()

    problems = []
    for level in out["stylize"]:
        other = {k: v for k, v in level["statuses"].items() if k not in (200, 429)}
        if other:
            problems.append(f"stylize x{level['clients']}: answers other than 200/429: {other}")
        if level["p99_ms"] > 3 * out["unloaded_median_ms"]:
            problems.append(f"stylize x{level['clients']}: p99 {level['p99_ms']} ms > 3× unloaded median {out['unloaded_median_ms']} ms")
    for k, st in out["jobs"].items():
        other = {s: n for s, n in st.items() if s not in (202, 429, "cancel 200")}
        if other:
            problems.append(f"jobs {k}: unexpected answers {other}")
    if any(st != "succeeded" for st, _ in out["trainings"]):
        problems.append(f"trainings ended {out['trainings']}")
    b, f = out["before"], out["after"]
    if f["rss_mb"] > 1.1 * b["rss_mb"]:
        problems.append(f"RSS grew from {b['rss_mb']} MB to {f['rss_mb']} MB")
    if f["fds"] > b["fds"] or f["temp_files"] > b["temp_files"]:
        problems.append(f"file descriptors {b['fds']}→{f['fds']}, temporary files {b['temp_files']}→{f['temp_files']}")
    out["problems"] = problems
    if a.json:
        print(json.dumps(out))
    else:
        print(f"POST /v1/stylize {a.side}², max_concurrent {a.max_concurrent}: unloaded median {out['unloaded_median_ms']} ms")
        for level in out["stylize"]:
            print(f"  {level['clients']} clients ({level['clients'] // a.max_concurrent}× capacity), {a.seconds:.0f} s: "
                  f"{level['ok']} admitted, p50 {level['p50_ms']} ms, p99 {level['p99_ms']} ms, answers {level['statuses']}")
        for k, st in out["jobs"].items():
            print(f"  training jobs at {k} of max_active_jobs {a.max_active_jobs} (3 rounds): {st}")
        print(f"  then {a.trainings} trainings to completion ({a.training_steps} steps at {a.training_side}²), status and RSS (MB) after each: {out['trainings']}")
        print(f"  before: {b}  after: {f}")
        print("  " + ("; ".join(problems) if problems else "all checks hold"))
    sys.exit(1 if a.check and problems else 0)


if __name__ == "__main__":
    main()
