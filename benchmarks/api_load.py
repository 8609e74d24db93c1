"""API benchmark: ``python -m benchmarks.api_load --root DIR`` (``make bench-api``).

Starts ``shoprec serve`` in a subprocess on 127.0.0.1 and drives it from another process (so the load generator
and the server each get a core):

1. latency: an open-loop constant-rate load (default 300 requests/s) on the recommendations endpoint over a mix
   of known users (uniform over the precomputed users) and new users (never seen: the popularity fallback),
   with ``/healthz`` probes interleaved as the control (a tail there too means the machine stalled the server,
   not the endpoint). Latency counts from each request's *scheduled* send time, so a stalled server cannot hide
   its queueing (no coordinated omission). A second open-loop run (default 200 requests/s) draws k at random,
   so nearly every request misses the response cache and ranks a list;
2. throughput: closed-loop saturation with keep-alive connections, alternating ``/healthz`` (the ceiling of this
   HTTP stack on this machine), the recommendations endpoint on the same mix, and on a mix that nearly always
   misses the response cache (random k), twice each;
3. event to list: for a sample of known users, one ``POST /v1/events`` (a view of their list's first item) and
   then their next list, timed from sending the event to receiving the list, and whether the list reflects it.

The client speaks HTTP/1.1 over raw asyncio streams (tens of microseconds per request), so it is not the
bottleneck. Results go to stdout, to ``--json`` and between the api-benchmark markers of ``--doc``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core.atomic import atomic_file, write_json
from pipelines.core.errors import ShoprecError

START, END = "<!-- api-benchmark:start -->", "<!-- api-benchmark:end -->"
NEW_USER_SHARE = 0.05
PROBE_EVERY = 10  # one /healthz probe per 9 recommendation requests during the latency run
TOKEN = "api-benchmark-token"  # the server's admin token, for POST /v1/events
EVENT_USERS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_bytes(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def request_mix(users: list[str], n: int, k: int | None, seed: int) -> list[bytes]:
    """``n`` GET requests: known users drawn uniformly, a share of never-seen users (the cold-start path).

    ``k=None`` draws k from 1..200 per request, so that nearly every request misses the response cache.
    """
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(users), n)
    new = rng.random(n) < NEW_USER_SHARE
    ks = rng.integers(1, 201, n) if k is None else np.full(n, k)
    return [request_bytes(f"/v1/users/{f'new-{i}' if new[i] else users[p]}/recommendations?k={ks[i]}")
            for i, p in enumerate(picks)]


class Connection:
    """One keep-alive HTTP/1.1 connection; ``call`` sends a request and returns the status code."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, raw: bytes) -> int:
        return (await self.fetch(raw))[0]

    async def fetch(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(raw)
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _open_loop(port: int, schedule: list[tuple[str, bytes]], rate: float,
                     connections: int) -> dict[str, dict[str, Any]]:
    """Send request i at start + i / rate on any idle connection; latency from the scheduled time, per label."""
    queue: asyncio.Queue[tuple[float, str, bytes] | None] = asyncio.Queue()
    latencies: dict[str, list[float]] = {label: [] for label, _ in schedule}
    errors = dict.fromkeys(latencies, 0)
    done_at = 0.0

    async def worker() -> None:
        nonlocal done_at
        conn = Connection(port)
        while (job := await queue.get()) is not None:
            due, label, raw = job
            try:
                ok = await conn.call(raw) == 200
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                conn.close()
                ok = False
            done_at = time.perf_counter()
            latencies[label].append(done_at - due)
            errors[label] += not ok
        conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter() + 0.05
    for i, (label, raw) in enumerate(schedule):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, label, raw))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    out = {}
    for label, values in latencies.items():
        ms = np.asarray(values) * 1000
        out[label] = {"requests": len(ms), "errors": errors[label],
                      "target_rps": round(rate * len(ms) / len(schedule), 1),
                      "achieved_rps": round(len(ms) / (done_at - start), 1),
                      **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
                      "max_ms": round(float(ms.max()), 2)}
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): per-request cost, whatever else runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> np.ndarray:
    """Machine-wide CPU ticks (user, nice, system, idle, iowait, irq, softirq, steal) from /proc/stat."""
    return np.array(Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9], dtype=np.int64)


def busy_and_steal(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Share of all CPU time that was busy (anyone's work) and stolen by the hypervisor between two readings."""
    delta = after - before
    total = max(int(delta.sum()), 1)
    return round(float(1 - (delta[3] + delta[4]) / total), 3), round(float(delta[7] / total), 3)


def run_queue_seconds(pid: int) -> float:
    """How long the server's main thread (the event loop) has waited for a CPU so far (Linux schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


async def _closed_loop(port: int, requests: list[bytes], seconds: float, connections: int,
                       server_pid: int) -> dict[str, Any]:
    """Every connection sends back to back for ``seconds``: the endpoint's maximum throughput."""
    count = errors = 0
    cpu_start = cpu_seconds(server_pid)
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal count, errors
        conn, i = Connection(port), offset
        while time.perf_counter() < stop:
            try:
                ok = await conn.call(requests[i % len(requests)]) == 200
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                conn.close()
                ok = False
            count += 1
            errors += not ok
            i += connections
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in range(connections)))
    elapsed = time.perf_counter() - start
    return {"requests": count, "errors": errors, "rps": round(count / elapsed, 1),
            "server_cpu_us": round((cpu_seconds(server_pid) - cpu_start) / max(count, 1) * 1e6, 1)}


async def _cache_hits(port: int) -> int:
    """The server's cache hits so far (from /v1/model)."""
    conn = Connection(port)
    try:
        return int(json.loads((await conn.fetch(request_bytes("/v1/model")))[1])["cache"]["hits"])
    finally:
        conn.close()


async def _event_to_list(port: int, users: list[str], k: int) -> dict[str, Any]:
    """Post a view of each user's first listed item, then ask for their list: milliseconds from the event's send
    to the list's arrival, and the share of lists that reflect it (the viewed item left the list)."""
    conn, times, reflected = Connection(port), [], 0
    try:
        for user in users:
            path = f"/v1/users/{user}/recommendations?k={k}"
            first = json.loads((await conn.fetch(request_bytes(path)))[1])["items"][0]["item_id"]
            event = {"user_id": user, "item_id": first, "event_type": "view",
                     "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            body = json.dumps({"events": [event]}).encode()
            post = (f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            start = time.perf_counter()
            status, _ = await conn.fetch(post)
            after = json.loads((await conn.fetch(request_bytes(path)))[1])
            times.append((time.perf_counter() - start) * 1000)
            reflected += status == 200 and first not in {i["item_id"] for i in after["items"]}
    finally:
        conn.close()
    ms = np.asarray(times)
    return {"users": len(users), "reflected_share": round(reflected / max(len(users), 1), 3),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


def _latency_run(plan: dict[str, Any], k: int | None, rate: float, seed: int) -> dict[str, Any]:
    """One open-loop run of the request mix (``k=None``: random k, nearly all cache misses) with interleaved
    ``/healthz`` probes, and what the machine and the cache did meanwhile."""
    port, n = plan["port"], int(rate * plan["duration_s"])
    # every PROBE_EVERY-th slot is a /healthz probe at the same moments: the control for what the machine does
    schedule: list[tuple[str, bytes]] = []
    for raw in request_mix(plan["users"], n, k, seed=seed):
        schedule.append(("recommendations", raw))
        if len(schedule) % PROBE_EVERY == PROBE_EVERY - 1:
            schedule.append(("healthz", request_bytes("/healthz")))
    hits_before, waited, ticks = asyncio.run(_cache_hits(port)), run_queue_seconds(plan["server_pid"]), cpu_times()
    stats = asyncio.run(_open_loop(port, schedule, rate * len(schedule) / n, plan["connections"]))
    busy, steal = busy_and_steal(ticks, cpu_times())
    out: dict[str, Any] = {"latency": stats["recommendations"], "healthz_latency": stats["healthz"]}
    out["latency"]["cache_hit_share"] = round((asyncio.run(_cache_hits(port)) - hits_before) / n, 3)
    out["latency"]["server_run_queue_s"] = round(run_queue_seconds(plan["server_pid"]) - waited, 2)
    out["latency"] |= {"machine_cpu_busy": busy, "machine_cpu_steal": steal}
    return out


def _client(plan: dict[str, Any], results: Any) -> None:
    """The load generator process: warm-up, open-loop latency (the mix, then cache misses), then alternating
    saturation runs."""
    port, users, k = plan["port"], plan["users"], plan["k"]
    warm = [("recommendations", raw) for raw in request_mix(users, int(plan["rate"] * 2), k, seed=1)]
    asyncio.run(_open_loop(port, warm, plan["rate"], 16))
    out = _latency_run(plan, k, plan["rate"], seed=2)
    misses = _latency_run(plan, None, plan["miss_rate"], seed=5)
    out |= {"miss_latency": misses["latency"], "miss_healthz_latency": misses["healthz_latency"]}
    mixes = {"healthz": [request_bytes("/healthz")], "recommendations": request_mix(users, 50_000, k, seed=3)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*mixes, "recommendations_uncached"]}
    for round_ in range(2):  # each round's misses are new requests: a repeat of round one's would hit the cache
        mixes["recommendations_uncached"] = request_mix(users, 50_000, None, seed=4 + 10 * round_)
        for name, reqs in mixes.items():
            hits = asyncio.run(_cache_hits(port))
            run = asyncio.run(_closed_loop(port, reqs, plan["saturate_s"], plan["connections"], plan["server_pid"]))
            run["cache_hit_share"] = round((asyncio.run(_cache_hits(port)) - hits) / max(run["requests"], 1), 3)
            runs[name].append(run)
    out["throughput"] = runs
    out["event_to_list"] = asyncio.run(_event_to_list(port, users[:EVENT_USERS], k))
    results.put(out)


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback only)
        return json.loads(resp.read())


def start_server(root: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("shoprec")
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--root", str(root)]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_WAIT_POLICY": "PASSIVE", "SHOPREC_ADMIN_TOKEN": TOKEN,
                        "SHOPREC_EVENTS_DIR": str(root / "reports" / "api_benchmark_events")}
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ShoprecError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if _get_json(f"http://127.0.0.1:{port}/readyz").get("ready"):
                return _get_json(f"http://127.0.0.1:{port}/v1/model")
        except OSError:
            pass
        time.sleep(0.5)
    raise ShoprecError(f"the server was not ready within {timeout_s:.0f} s")


def known_users(root: Path, limit: int = 50_000) -> list[str]:
    """User ids with precomputed lists (the store the server reads), which the mix draws from."""
    import pyarrow.parquet as pq

    path = root / "serving" / "recommendations.parquet"
    if not path.exists():
        raise ShoprecError(f"{path} missing: run `shoprec batch-recommend --root {root}` first")
    users = pq.read_table(path, columns=["user_id"]).column("user_id").unique().to_pylist()
    return users[:limit]


def run_benchmark(root: Path, rate: float, duration_s: float, saturate_s: float, connections: int,
                  k: int, miss_rate: float = 200.0) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    users = known_users(root)
    port = free_port()
    proc = start_server(root, port, root / "reports" / "api_benchmark_server.log")
    try:
        model = wait_ready(proc, port, timeout_s=180)
        plan = {"port": port, "server_pid": proc.pid, "users": users, "k": k, "rate": rate, "miss_rate": miss_rate,
                "duration_s": duration_s, "saturate_s": saturate_s, "connections": connections}
        results: Any = mp.get_context("spawn").Queue()
        client = mp.get_context("spawn").Process(target=_client, args=(plan, results))
        client.start()
        out = results.get(timeout=2 * duration_s + 12 * saturate_s + 120)
        client.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    tp = out["throughput"]
    rec_rps = float(np.mean([r["rps"] for r in tp["recommendations"]]))
    health_rps = float(np.mean([r["rps"] for r in tp["healthz"]]))
    uncached_rps = float(np.mean([r["rps"] for r in tp["recommendations_uncached"]]))
    return {
        "load_at_start": load_at_start, "cpus": os.cpu_count(), "model_version": model.get("version"),
        "precomputed": model.get("precomputed"), "known_users": len(users), "k": k,
        "latency": out["latency"], "healthz_latency": out["healthz_latency"], "throughput": tp,
        "miss_latency": out["miss_latency"], "miss_healthz_latency": out["miss_healthz_latency"],
        "event_to_list": out["event_to_list"],
        "recommendations_rps": round(rec_rps, 1), "healthz_rps": round(health_rps, 1),
        "ratio": round(rec_rps / health_rps, 3), "ratio_uncached": round(uncached_rps / health_rps, 3),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def markdown(result: dict[str, Any], command: str, miss_target_ms: float = 20.0) -> str:
    lat, load, ctl = result["latency"], result["load_at_start"], result["healthz_latency"]
    ev = result["event_to_list"]
    p99_ok = lat["p99_ms"] <= 20 and lat["achieved_rps"] >= 0.98 * lat["target_rps"]
    ratio_ok = result["ratio"] >= 0.6
    miss, miss_ctl = result["miss_latency"], result["miss_healthz_latency"]
    miss_ok = miss["p99_ms"] <= miss_target_ms and miss["achieved_rps"] >= 0.98 * miss["target_rps"]
    return "\n".join([
        f"Run {result['at']} on {result['cpus']} cores, load average at start {load[0]} / {load[1]} / {load[2]} "
        f"(1 / 5 / 15 min; other work on the machine counts), model version {result['model_version']}, "
        f"precomputed lists: {result['precomputed']}, {result['known_users']:,} known users + "
        f"{NEW_USER_SHARE:.0%} new users, k={result['k']}.",
        "",
        f"Command: `{command}`",
        "",
        "| open loop, constant rate | GET /v1/users/{id}/recommendations | GET /healthz probes, interleaved |",
        "| --- | --- | --- |",
        f"| target rate | {lat['target_rps']:.0f} req/s | {ctl['target_rps']:.0f} req/s |",
        f"| achieved rate | {lat['achieved_rps']} req/s | {ctl['achieved_rps']} req/s |",
        f"| requests / errors | {lat['requests']:,} / {lat['errors']} | {ctl['requests']:,} / {ctl['errors']} |",
        f"| p50 / p95 / p99 | {lat['p50_ms']} / {lat['p95_ms']} / {lat['p99_ms']} ms | "
        f"{ctl['p50_ms']} / {ctl['p95_ms']} / {ctl['p99_ms']} ms |",
        f"| max | {lat['max_ms']} ms | {ctl['max_ms']} ms |",
        f"| server event loop waiting for a CPU (other processes) | {lat['server_run_queue_s']} s in "
        f"{lat['requests'] / lat['target_rps']:.0f} s | |",
        f"| machine CPU busy (everyone, both cores) / stolen by the hypervisor | {lat['machine_cpu_busy']:.0%} / "
        f"{lat['machine_cpu_steal']:.1%} | |",
        f"| answered from the response cache | {lat['cache_hit_share']:.0%} (the rest: precomputed lists, "
        f"popularity for new users) | |",
        f"| target p99 <= 20 ms at {lat['target_rps']:.0f} req/s | {'met' if p99_ok else 'NOT met'} | |",
        "",
        "| open loop, cache misses (random k 1-200) | GET /v1/users/{id}/recommendations | GET /healthz probes |",
        "| --- | --- | --- |",
        f"| target / achieved rate | {miss['target_rps']:.0f} / {miss['achieved_rps']} req/s | "
        f"{miss_ctl['target_rps']:.0f} / {miss_ctl['achieved_rps']} req/s |",
        f"| requests / errors | {miss['requests']:,} / {miss['errors']} | {miss_ctl['requests']:,} / "
        f"{miss_ctl['errors']} |",
        f"| p50 / p95 / p99 / max | {miss['p50_ms']} / {miss['p95_ms']} / {miss['p99_ms']} / {miss['max_ms']} ms | "
        f"{miss_ctl['p50_ms']} / {miss_ctl['p95_ms']} / {miss_ctl['p99_ms']} / {miss_ctl['max_ms']} ms |",
        f"| answered from the response cache | {miss['cache_hit_share']:.0%} | |",
        f"| machine CPU busy / server waiting for a CPU | {miss['machine_cpu_busy']:.0%} / "
        f"{miss['server_run_queue_s']} s | |",
        f"| target p99 <= {miss_target_ms:.0f} ms at {miss['target_rps']:.0f} req/s | "
        f"{'met' if miss_ok else 'NOT met'} | |",
        "",
        "| saturation (closed loop) | req/s (two runs) | server CPU per request | from the cache | errors |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {name} | {' / '.join(str(r['rps']) for r in runs)} | "
          f"{' / '.join(str(r['server_cpu_us']) for r in runs)} us | "
          f"{' / '.join(format(r.get('cache_hit_share', 0), '.0%') for r in runs)} | {sum(r['errors'] for r in runs)} |"
          for name, runs in (("recommendations (the mix above)", result["throughput"]["recommendations"]),
                             ("recommendations, random k 1-200 (cache misses)",
                              result["throughput"]["recommendations_uncached"]),
                             ("/healthz", result["throughput"]["healthz"]))],
        f"| ratio recommendations / healthz | {result['ratio']:.2f} (target >= 0.60: "
        f"{'met' if ratio_ok else 'NOT met'}) | | | |",
        f"| ratio with cache misses only / healthz | {result['ratio_uncached']:.2f} (target >= 0.25: "
        f"{'met' if result['ratio_uncached'] >= 0.25 else 'NOT met'}) | | | |",
        "",
        f"Event to list ({ev['users']} known users, one after another): `POST /v1/events` (a view of the list's "
        f"first item), then the user's next list: p50 / p99 / max {ev['p50_ms']} / {ev['p99_ms']} / "
        f"{ev['max_ms']} ms from sending the event to receiving the list (target <= 100 ms: "
        f"{'met' if ev['p99_ms'] <= 100 else 'NOT met'}); lists reflecting the event (the viewed item left the "
        f"list): {ev['reflected_share']:.0%}.",
    ])


def update_doc(doc: Path, body: str, start: str = START, end: str = END, heading: str = "API latency") -> None:
    """Replace the text between the ``start`` / ``end`` markers (append a ``heading`` section with them if absent).

    The markers default to the api-benchmark ones; other benchmarks (benchmarks/ann.py) pass their own.
    """
    text = doc.read_text() if doc.exists() else ""
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{block}\n"
    with atomic_file(doc) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="project with a trained model and serving/ store")
    parser.add_argument("--rate", type=float, default=300.0, help="open-loop requests per second")
    parser.add_argument("--miss-rate", type=float, default=200.0, help="open-loop requests per second, cache misses")
    parser.add_argument("--duration", type=float, default=30.0, help="open-loop seconds (each of the two runs)")
    parser.add_argument("--saturate", type=float, default=8.0, help="seconds per saturation run")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default ROOT/reports)")
    parser.add_argument("--doc", type=Path, default=None, help="markdown file with the api-benchmark markers")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.api_load " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        result = run_benchmark(args.root.resolve(), args.rate, args.duration, args.saturate, args.connections, args.k,
                               args.miss_rate)
    except ShoprecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    text = markdown(result, command)
    print(text)
    write_json(args.json or args.root / "reports" / "api_benchmark.json", result | {"command": command})
    if args.doc is not None:
        update_doc(args.doc, text)


if __name__ == "__main__":
    main()
