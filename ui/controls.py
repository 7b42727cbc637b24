"""The row every long job has: its button, a Stop button, and the line under them for progress and errors."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr


class JobControls(NamedTuple):
    run: gr.Button
    stop: gr.Button
    line: gr.Markdown  # progress while the job runs, a plain error message if it fails


def job_controls(label: str, run_id: str, prefix: str, variant: str = "primary") -> JobControls:
    """`label` button (elem_id `run_id`) and Stop (`{prefix}-stop`) in a row, then the line (`{prefix}-progress`)."""
    with gr.Row():
        run = gr.Button(label, variant=variant, elem_id=run_id, scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop", scale=1)
    line = gr.Markdown(elem_id=f"{prefix}-progress", elem_classes=["progress-line"])
    return JobControls(run, stop, line)
