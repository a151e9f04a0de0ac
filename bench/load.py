#!/usr/bin/env python3
"""Load figure for `POST /v1/stylize`: sustained requests/s and p50/p99 latency with N
concurrent clients, beside the raw model throughput of the same generator measured in the
same run (`atelier bench --no-peers`, same architecture and size, in-process, no HTTP).

    python3 bench/load.py --bin target/release/atelier [--clients 4] [--seconds 60] [--side 512]

Starts `atelier serve` on a fresh data folder and a free port, sends a side×side PNG as fast
as the clients can, and prints a table (and --json). Standard library only."""
import argparse, http.client, json, os, socket, statistics, subprocess, sys, tempfile, threading, time, zlib, struct


def png(side):
    rows = bytearray()
    for y in range(side):
        rows.append(0)
        for x in range(side):
            rows += bytes(((x * 7 + y * 3) % 256, (x * y) % 256, (y * 5) % 256))
    def chunk(t, d):
        c = struct.pack(">I", len(d)) + t + d
        return c + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(rows), 6)) + chunk(b"IEND", b"")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/atelier")
    ap.add_argument("--model", default="ukiyoe")
    ap.add_argument("--arch", default="resnet_6blocks", help="the model's architecture, for the raw figure")
    ap.add_argument("--ngf", default="16")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--max-concurrent", default="2", help="server's model slots")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    raw = subprocess.run([a.bin, "bench", "--arch", a.arch, "--ngf", a.ngf, "--sizes", str(a.side),
                          "--no-peers", "--json", "--repeat", "5"], capture_output=True, text=True, check=True)
    rows = json.loads(raw.stdout)
    rows = rows if isinstance(rows, list) else rows.get("cases", rows.get("rows", []))
    raw_ms = next(r["atelier_ms"] for r in rows if str(a.side) in r["name"])

    data = tempfile.mkdtemp(prefix="atelier-load-")
    port = free_port()
    srv = subprocess.Popen([a.bin, "serve", "--port", str(port), "--data", data, "--max-concurrent", a.max_concurrent,
                            "--rate-limit-per-minute", "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2); c.request("GET", "/readyz")
                if c.getresponse().status == 200: break
            except OSError: pass
            time.sleep(0.1)
        body = png(a.side)
        path = f"/v1/stylize?model={a.model}&format=jpg&max_side={a.side}"
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request("POST", path, body); r = c.getresponse(); r.read(); assert r.status == 200, r.status  # warm-up, loads the model
        lat, statuses, lock = [], {}, threading.Lock()
        stop_at = time.time() + a.seconds

        def client():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while time.time() < stop_at:
                t0 = time.perf_counter()
                conn.request("POST", path, body)
                resp = conn.getresponse(); resp.read()
                dt = time.perf_counter() - t0
                with lock:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 200: lat.append(dt)
                if resp.status == 429:
                    time.sleep(float(resp.getheader("Retry-After", "1")) / 20)

        t0 = time.time()
        ts = [threading.Thread(target=client) for _ in range(a.clients)]
        [t.start() for t in ts]; [t.join() for t in ts]
        wall = time.time() - t0
    finally:
        srv.terminate(); srv.wait()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    out = {"side": a.side, "clients": a.clients, "seconds": round(wall, 1), "ok": len(lat), "statuses": statuses,
           "requests_per_s": round(len(lat) / wall, 2), "p50_ms": round(q(0.5)), "p99_ms": round(q(0.99)),
           "raw_model_ms": round(raw_ms), "raw_model_per_s": round(1000 / raw_ms, 2)}
    if a.json: print(json.dumps(out))
    else:
        print(f"POST /v1/stylize {a.side}² x{a.clients} clients, {out['seconds']} s: {out['requests_per_s']} req/s (200s), "
              f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, statuses {statuses}")
        print(f"raw model ({a.arch} ngf {a.ngf}, in-process forward at {a.side}²): {out['raw_model_ms']} ms = {out['raw_model_per_s']} images/s; "
              f"HTTP throughput is {out['requests_per_s'] / out['raw_model_per_s']:.2f}× of it")


if __name__ == "__main__":
    main()
