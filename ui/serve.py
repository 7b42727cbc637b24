"""Serve the Locus app: `locus app` / `python app.py [--model M ...] [--device D] [--host 127.0.0.1] [--port 7860]`.

Start-up: the arguments are parsed first (so `--help` is instant), then Gradio and the page's
modules are imported (they import the tracer and editor, hence torch and transformers, at the top),
the page is built and served, and the model's weights load on the runner thread. The page shows
"loading" until the model is ready and queues any work behind it.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from core.cli import add_worker_arguments, check_worker_arguments, worker_pool
from core.errors import InputError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def parse_arguments(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="Serve the Locus app (causal tracing and MEMIT in the browser).")
    parser.add_argument(
        "--model",
        action="append",
        help="model the page may use: 'embedded' (default), a local folder or a hub id; repeat to offer several",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU) | float32 | bfloat16 | float16")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow hub models to run their own code (off by default)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    access = parser.add_argument_group("access (needed with --share or a --host that is not loopback)")
    access.add_argument("--auth", metavar="USER:PASSWORD", help="ask visitors for this user name and password")
    access.add_argument("--auth-file", metavar="FILE", help="a file of USER:PASSWORD lines (one account per line)")
    access.add_argument(
        "--insecure-no-auth", action="store_true",
        help="serve --share or a non-loopback --host without a password: anyone who reaches the page can run and edit the model",
    )
    parser.add_argument(
        "--no-preempt", action="store_true",
        help="run each long job (a trace, an edit) to its end before any other job; by default other visitors' "
             "short jobs (a prediction) run at its pauses (the benchmark's baseline: python -m bench preempt)",
    )
    add_worker_arguments(parser)  # the Averages tab runs its facts on these workers
    bounds = parser.add_argument_group("what one request may ask")
    bounds.add_argument("--max-requests", type=int, default=500, help="edit requests per batch (default 500)")
    bounds.add_argument("--max-prompt-tokens", type=int, default=1024, help="tokens of a prompt to predict from (default 1024)")
    bounds.add_argument("--max-upload-mb", type=int, default=64, help="size of an uploaded file, in MB (default 64)")
    bounds.add_argument("--max-session-edits-mb", type=int, default=256,
                        help="memory one visitor's edits may hold, in MiB (default 256: about 3,400 edits of the embedded model)")
    return parser.parse_args(argv)


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def refuse(message: str) -> NoReturn:
    """Stop before serving anything: one `error:` line, exit status 2 (as the CLIs do)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def auth_file_lines(path: str) -> list[str]:
    """The non-blank lines of an --auth-file; SystemExit(2) when it cannot be read or holds none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        refuse(f"cannot read --auth-file {path}: {error.strerror or error}")
    except UnicodeDecodeError:
        refuse(f"--auth-file {path} is not UTF-8 text.")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        refuse(f"--auth-file {path} has no USER:PASSWORD line.")
    return lines


def access_accounts(arguments: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The accounts visitors must log in with (None: no login); SystemExit(2) with a reason when serving unsafely."""
    lines = [arguments.auth] if arguments.auth is not None else []
    if arguments.auth_file:
        lines += auth_file_lines(arguments.auth_file)
    accounts = []
    for line in lines:
        user, colon, password = line.partition(":")
        if not colon or not user or not password:
            refuse("--auth and --auth-file lines must be USER:PASSWORD (both non-empty).")
        accounts.append((user, password))
    exposed = [f"--host {arguments.host}"] if arguments.host not in LOOPBACK else []
    if arguments.share:
        exposed.append("--share (a public link)")
    if exposed and not accounts and not arguments.insecure_no_auth:
        refuse(
            f"{' and '.join(exposed)} would let anyone who reaches the page run and edit the model. "
            "Give --auth USER:PASSWORD (or --auth-file FILE), or --insecure-no-auth if that is really what you want."
        )
    for name in ("max_requests", "max_prompt_tokens", "max_upload_mb", "max_session_edits_mb"):
        if getattr(arguments, name) < 1:
            refuse(f"--{name.replace('_', '-')} must be at least 1.")
    try:
        check_worker_arguments(arguments)
    except InputError as error:
        refuse(str(error))
    return accounts or None


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    started = time.perf_counter()
    arguments = parse_arguments(argv, prog)
    accounts = access_accounts(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # Threads that wait for work sleep instead of spinning: with a few visitors' jobs, other processes and 2 cores, a
    # spinning OpenMP team kept a prediction at 6-9 s; sleeping, 1.2 s (python -m bench preempt). Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # lazy: gradio, torch and transformers take ~6 s; `python app.py --help` must not wait for them
    from ui.models import ModelManager
    from ui.runner import ModelRunner

    manager = ModelManager(arguments.model, arguments.device, arguments.dtype, arguments.trust_remote_code)
    runner = ModelRunner(preempt=not arguments.no_preempt)
    workers = argparse.Namespace(**{**vars(arguments), "model": manager.default_spec})  # the workers load the first model
    with worker_pool(workers) as pool:  # None unless --workers/--ray: then Averages run on the cluster
        serve(arguments, accounts, manager, runner, pool, started)


def start_server(arguments: argparse.Namespace, accounts: list[tuple[str, str]] | None, manager: Any, runner: Any,
                 pool: Any = None) -> tuple[Any, Any]:
    """Build the page and start serving it in the background: the running gr.Blocks and its SessionStore."""
    # lazy: gradio, torch and transformers; `python app.py --help` must not wait for them
    from ui.app import build_app, launch_options
    from ui.limits import Limits
    from ui.sessions import SessionStore

    limits = Limits(
        max_requests=arguments.max_requests,
        max_prompt_tokens=arguments.max_prompt_tokens,
        max_upload_bytes=arguments.max_upload_mb * 2**20,
        max_session_edit_bytes=arguments.max_session_edits_mb * 2**20,
    )
    sessions = SessionStore()
    demo = build_app(manager, runner, limits, pool=pool, sessions=sessions)
    demo.launch(
        server_name=arguments.host,
        server_port=arguments.port,
        share=arguments.share,
        auth=accounts,
        max_file_size=limits.max_upload_bytes,
        prevent_thread_lock=True,
        **launch_options(),
    )
    return demo, sessions


def exit_on_signal(signal_number: int, frame: Any) -> NoReturn:
    """`kill` stops the server as Ctrl-C does: Python exits normally, so the atexit clean-ups run."""
    raise SystemExit(128 + signal_number)


def serve(arguments, accounts, manager, runner, pool, started: float) -> None:
    """Serve the page, load the model, block until the server stops, then end the visitors' sessions."""
    demo, sessions = start_server(arguments, accounts, manager, runner, pool)
    atexit.register(sessions.close)  # the visitors' temporary files go however the process ends
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # (Gradio's SSR mode sets its own, which exits too)
        signal.signal(signal.SIGTERM, exit_on_signal)
    loading = runner.submit(lambda job: manager.get(manager.default_spec), name="load model")
    print(f"Locus is serving on {demo.local_url} (ready in {time.perf_counter() - started:.1f} s; the model loads in the background)", flush=True)
    loading.finished.wait()
    status = manager.status()
    if status.get("state") == "ready":
        print(f"Model ready: {status['name']} ({time.perf_counter() - started:.1f} s after start)", flush=True)
    else:
        print(f"Model not loaded: {status.get('error', status)}", flush=True)
    demo.block_thread()  # returns after Ctrl-C
    demo.close()
    sessions.close()
