"""Locus app: `python app.py [--model M ...] [--device D] [--host 127.0.0.1] [--port 7860] [--share]`.

Start-up: the arguments are parsed first (so `--help` is instant), then Gradio and the page's
modules are imported (they import the tracer and editor, hence torch and transformers, at the top),
the page is built and served, and the model's weights load on the runner thread. The page shows
"loading" until the model is ready and queues any work behind it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from core.cli import add_worker_arguments, check_worker_arguments, worker_pool
from core.errors import InputError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the Locus app (causal tracing and MEMIT in the browser).")
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
    access = parser.add_argument_group("access (needed when --host is not loopback)")
    access.add_argument("--auth", metavar="USER:PASSWORD", help="ask visitors for this user name and password")
    access.add_argument("--auth-file", metavar="FILE", help="a file of USER:PASSWORD lines (one account per line)")
    access.add_argument(
        "--insecure-no-auth", action="store_true",
        help="serve a non-loopback --host without a password: anyone on the network can run and edit the model",
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


def refuse(message: str) -> None:
    """Stop before serving anything: one `error:` line, exit status 2 (as the CLIs do)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def access_accounts(arguments: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The accounts visitors must log in with (None: no login); SystemExit(2) with a reason when serving unsafely."""
    accounts = []
    lines = [arguments.auth] if arguments.auth else []
    if arguments.auth_file:
        try:
            lines += [line.strip() for line in Path(arguments.auth_file).read_text().splitlines() if line.strip()]
        except OSError as error:
            refuse(f"cannot read --auth-file {arguments.auth_file}: {error.strerror or error}")
    for line in lines:
        user, colon, password = line.partition(":")
        if not colon or not user or not password:
            refuse("--auth and --auth-file lines must be USER:PASSWORD (both non-empty).")
        accounts.append((user, password))
    if arguments.host not in LOOPBACK and not accounts and not arguments.insecure_no_auth:
        refuse(
            f"--host {arguments.host} would let anyone who can reach this machine run and edit the model. "
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


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    arguments = parse_arguments(argv)
    accounts = access_accounts(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # lazy: gradio, torch and transformers take ~6 s; `python app.py --help` must not wait for them
    from ui.limits import Limits
    from ui.models import ModelManager
    from ui.runner import ModelRunner

    manager = ModelManager(arguments.model, arguments.device, arguments.dtype, arguments.trust_remote_code)
    runner = ModelRunner()

    limits = Limits(
        max_requests=arguments.max_requests,
        max_prompt_tokens=arguments.max_prompt_tokens,
        max_upload_bytes=arguments.max_upload_mb * 2**20,
        max_session_edit_bytes=arguments.max_session_edits_mb * 2**20,
    )
    workers = argparse.Namespace(**{**vars(arguments), "model": manager.default_spec})  # the workers load the first model
    with worker_pool(workers) as pool:  # None unless --workers/--ray: then Averages run on the cluster
        serve(arguments, accounts, manager, runner, limits, pool, started)


def serve(arguments, accounts, manager, runner, limits, pool, started: float) -> None:
    """Build the page, serve it, load the model, and block until the server stops."""
    # lazy: gradio, torch and transformers; `python app.py --help` must not wait for them
    from ui.app import build_app, launch_options

    demo = build_app(manager, runner, limits, pool=pool)
    demo.launch(
        server_name=arguments.host,
        server_port=arguments.port,
        share=arguments.share,
        auth=accounts,
        max_file_size=limits.max_upload_bytes,
        prevent_thread_lock=True,
        **launch_options(),
    )
    loading = runner.submit(lambda job: manager.get(manager.default_spec), name="load model")
    print(f"Locus is serving on {demo.local_url} (ready in {time.perf_counter() - started:.1f} s; the model loads in the background)", flush=True)
    loading.finished.wait()
    status = manager.status()
    if status.get("state") == "ready":
        print(f"Model ready: {status['name']} ({time.perf_counter() - started:.1f} s after start)", flush=True)
    else:
        print(f"Model not loaded: {status.get('error', status)}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
