"""Benchmark: a bounded soak of the real app: N simulated visitors on loopback for a fixed time.

Starts `app.py` in a subprocess on a free loopback port, waits for its model, warms up with one
predict, preview and edit (the first edit of a fresh cache computes the covariance of R, about a
minute on a CPU) and undoes it, then runs the visitors of bench/soak.py: each its own gradio_client session looping
predict, preview trace, a refused bad input, its own edit (10 optimisation steps), predict, undo.
Prints p50/p95 latency per endpoint, requests served, failed requests, whether each visitor's final
predictions match its own ledger, the server's peak RSS (VmRSS sampled from /proc) and the load
average. Exit status 1 on any failed request or mismatch.

    python -m bench soak                          # 4 visitors, 120 s
    python -m bench soak --visitors 8 --seconds 600 --json soak.json
    python -m bench soak --with-trace [bench preempt's options]   # predict p50/p95 while another visitor traces

`--with-trace` is `python -m bench preempt` (bench/bench_preempt.py): one visitor runs an exact 3-kind trace while
the others predict, against the same trace uninterrupted and against `--no-preempt`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.soak import FACTS, SoakSettings, format_report, process_rss, run_soak, warm_up

ROOT = Path(__file__).resolve().parents[1]
READY = "Model ready"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=4, help="simulated visitors, each its own session (default 4)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long they keep sending requests (default 120)")
    parser.add_argument("--port", type=int, default=None, help="loopback port for the app (default: a free one)")
    parser.add_argument("--steps", type=int, default=10, help="optimisation steps of each visitor's edit (default 10)")
    parser.add_argument("--tokens", type=int, default=None, help="covariance token budget of the edits (default: the app's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of the app (OMP_NUM_THREADS; on a shared, busy machine 1 is kinder)")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the app's model")
    parser.add_argument("--json", default=None, help="also write every request's record as JSON")
    parser.add_argument("--with-trace", action="store_true",
                        help="instead: predict p50/p95 while another visitor runs an exact trace (`python -m bench soak "
                             "--with-trace` runs `bench preempt` with the other options)")
    arguments = parser.parse_args(argv)
    if arguments.visitors < 1 or arguments.seconds <= 0 or arguments.steps < 1 or (arguments.threads or 1) < 1:
        parser.error("--visitors, --steps and --threads must be at least 1 and --seconds positive")
    return arguments


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppProcess:
    """`python app.py --port P [options]` on loopback; its output is echoed with a prefix and watched for a line."""

    def __init__(self, port: int, threads: int | None = None, options: tuple[str, ...] = ()):
        self.url = f"http://127.0.0.1:{port}"
        environment = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), *options],
            cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []  # the lines wait_for has read
        threading.Thread(target=self._pump, name="app-output", daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None and self.lines.empty():
                raise RuntimeError(f"the app exited with status {self.process.returncode} before {text!r}")
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if "Loading weights" not in line:
                print(f"  [app] {line}", flush=True)
            if text in line:
                return
        raise RuntimeError(f"the app did not print {text!r} within {timeout:g} s")

    def startup(self) -> dict:
        """Seconds after its start at which the app said it was serving and that its model was ready (None if not seen)."""
        found: dict = {"serving_seconds": None, "ready_seconds": None}
        for line in self.seen:
            serving = re.search(r"ready in ([0-9.]+) s", line)
            ready = re.search(r"Model ready: .*\(([0-9.]+) s after start\)", line)
            if serving:
                found["serving_seconds"] = float(serving.group(1))
            if ready:
                found["ready_seconds"] = float(ready.group(1))
        return found

    def rss(self) -> int:
        return process_rss(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    settings = SoakSettings(visitors=arguments.visitors, seconds=arguments.seconds, steps=arguments.steps,
                            cov_tokens=arguments.tokens)
    port = arguments.port or free_port()
    print(f"{arguments.visitors} visitors for {arguments.seconds:g} s against app.py on 127.0.0.1:{port} "
          f"({os.cpu_count()} cores, app threads: {arguments.threads or 'torch default'}, "
          f"load average {os.getloadavg()[0]:.1f}); facts: "
          + ", ".join(f"{fact.subject} -> {fact.new_object}" for fact in FACTS[: arguments.visitors]), flush=True)
    app = AppProcess(port, arguments.threads)
    try:
        app.wait_for(READY, arguments.startup_timeout)
        startup = app.startup()
        print(f"server RSS after the model loaded: {app.rss() / 2**20:,.0f} MiB", flush=True)
        print("warm-up: a predict, a preview, an edit and its undo (the edit computes the covariance of R "
              "if it is not cached yet) ...", flush=True)
        print(f"warm-up: {warm_up(app.url, settings):.1f} s (not counted below)", flush=True)
        report = run_soak(app.url, settings, app.rss, log=lambda line: print(line, flush=True))
    finally:
        app.stop()
    print(format_report(report))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(report.to_dict() | {"startup": startup}, indent=1), encoding="utf-8")
    print("PASS" if report.passed else "FAIL: see the failed requests and mismatches above")
    return 0 if report.passed else 1
