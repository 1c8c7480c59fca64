"""Server load test: N concurrent clients POST /detect on loopback for a fixed time; a table of what came back.

Usage::

    python benchmarks/bench_server_load.py [--model default] [--clients 50] [--duration 30] [--size 320] \
        [--configs 1x2 2x1] [--max-waiting 8]

For each ``--configs`` entry ``WxT`` (``W`` inference workers, ``T`` torch threads; ``T`` = 0: torch's
default) in turn: starts ``regionprompt serve`` in a subprocess on 127.0.0.1 (a free port), waits until
``/health`` answers, then runs ``--clients`` threads that each send one EmojiWorld scene with a text
prompt, again and again, for ``--duration`` seconds; then stops the clients and the server by itself
(the server is killed if it does not exit within 10 s). Nothing leaves the machine.

Prints, per configuration, one row per status code (count, median and p95 latency), the served
images/s (200 answers per second of the run) and a request made 2 s after the load stopped (must be
200: the server recovers); then one comparison table with each configuration's images/s as a ratio
to the first. The issue 17 figures (50 clients, 3 minutes, default model): 4.3 images/s served, p95
2.5 s for 200 and 0.05 s for 503, no 5xx.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scene_png(size: int) -> bytes:
    """One EmojiWorld test scene as PNG bytes (what the clients upload)."""
    from regionprompt.world.render import SceneRenderer
    from regionprompt.world.scene import SceneConfig

    image = SceneRenderer.default(SceneConfig(size=size)).render("test", 0, 1).image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(image: bytes, prompts: dict) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with the ``image`` file and the ``prompts`` field; and its content type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompts"\r\n\r\n{json.dumps(prompts)}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="scene.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(port: int, body: bytes, content_type: str, timeout: float) -> tuple[int, float]:
    """``(status, seconds)`` of one POST /detect; status 0 for a connection error or client timeout."""
    start = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request("POST", "/detect", body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        response.read()
        status = response.status
        connection.close()
    except OSError:
        status = 0
    return status, time.perf_counter() - start


def wait_healthy(port: int, server: subprocess.Popen, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode} before answering /health "
                             "(its log is in $TMPDIR/bench-load-PORT.log)")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass  # not listening yet: ask again
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer /health within {limit_s:g} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def run_load(port: int, body: bytes, content_type: str, clients: int, duration: float,
             timeout: float) -> tuple[dict[int, list[float]], float]:
    """Latencies by status from ``clients`` threads posting until ``duration`` seconds have passed."""
    results: dict[int, list[float]] = defaultdict(list)
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client() -> None:
        while time.monotonic() < stop_at:
            status, seconds = post(port, body, content_type, timeout)
            with lock:
                results[status].append(seconds)
            if status == 503:
                time.sleep(0.05)  # a polite client backs off a little on 503 (Retry-After)

    start = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + timeout + 5)
    return results, time.monotonic() - start


def serve_and_load(args: argparse.Namespace, workers: int, threads: int, body: bytes,
                   content_type: str) -> tuple[dict[int, list[float]], float, int]:
    """One configuration: start the server, load it, stop it; ``(latencies by status, seconds, after)``."""
    port = free_port()
    command = [sys.executable, "-m", "regionprompt", "-q", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--model", args.model, "--workers", str(workers), "--max-waiting", str(args.max_waiting),
               "--library", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-load-{port}.db")]
    if threads:
        command += ["--threads", str(threads)]
    # The server's log goes to a file: a pipe nobody reads would fill up and block it under load.
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-load-{port}.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, server, limit_s=120)
        print(f"\nserver on 127.0.0.1:{port} (model {args.model}, {workers} worker(s), "
              f"{threads or 'default'} torch threads, queue {args.max_waiting}); "
              f"{args.clients} clients for {args.duration:g} s ...", flush=True)
        results, elapsed = run_load(port, body, content_type, args.clients, args.duration, args.timeout)
        time.sleep(2)
        after, _ = post(port, body, content_type, args.timeout)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return results, elapsed, after


def parse_config(text: str) -> tuple[int, int]:
    try:
        workers, threads = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--configs entries are WORKERSxTHREADS such as 1x2, got {text!r}") from None
    if not (1 <= workers <= 16 and 0 <= threads <= 64):
        raise SystemExit(f"--configs {text!r}: workers must be in 1..16 and threads in 0..64")
    return workers, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="detector folder, or 'default' (the shipped model)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per configuration (default 30)")
    parser.add_argument("--size", type=int, default=320, help="scene side in pixels (default 320)")
    parser.add_argument("--configs", nargs="+", default=["1x0", "2x1"],
                        help="server configurations WORKERSxTHREADS, compared in one run (default 1x0 2x1; "
                        "threads 0: torch's default)")
    parser.add_argument("--max-waiting", type=int, default=8, help="server queue before 503 (default 8)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request in s (default 60)")
    args = parser.parse_args()
    if not (1 <= args.clients <= 500 and 0 < args.duration <= 1800):
        raise SystemExit("--clients must be in 1..500 and --duration in (0, 1800] (a bounded test)")
    configs = [parse_config(c) for c in args.configs]

    body, content_type = multipart(scene_png(args.size), {"text": ["dog", "red apple", "car"]})
    summary = []
    for workers, threads in configs:
        results, elapsed, after = serve_and_load(args, workers, threads, body, content_type)
        print("\n| status | count | median s | p95 s |\n|---|---|---|---|")
        for status in sorted(results):
            latencies = results[status]
            label = "error" if status == 0 else str(status)
            print(f"| {label} | {len(latencies)} | {percentile(latencies, 0.5):.3f} | {percentile(latencies, 0.95):.3f} |")
        served = len(results.get(200, []))
        server_errors = sum(len(v) for k, v in results.items() if k >= 500 and k != 503)
        print(f"\nserved {served / elapsed:.2f} images/s over {elapsed:.1f} s; 5xx other than 503: {server_errors}; "
              f"a request 2 s after the load: {after}")
        summary.append((f"{workers}x{threads or 'default'}", served / elapsed,
                        percentile(results.get(200, []), 0.95), server_errors, after))
    print("\n| workers x threads | served images/s | ratio | p95 s (200) | 5xx | after |\n|---|---|---|---|---|---|")
    for name, rate, p95, errors, after in summary:
        ratio = rate / summary[0][1] if summary[0][1] else float("nan")
        print(f"| {name} | {rate:.2f} | {ratio:.2f}x | {p95:.2f} | {errors} | {after} |")


if __name__ == "__main__":
    main()
