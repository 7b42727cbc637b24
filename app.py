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
import time

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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # lazy: gradio, torch and transformers take ~6 s; `python app.py --help` must not wait for them
    from ui.app import build_app, launch_options
    from ui.models import ModelManager
    from ui.runner import ModelRunner

    manager = ModelManager(arguments.model, arguments.device, arguments.dtype, arguments.trust_remote_code)
    runner = ModelRunner()

    demo = build_app(manager, runner)
    demo.launch(
        server_name=arguments.host,
        server_port=arguments.port,
        share=arguments.share,
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
