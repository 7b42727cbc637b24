"""Locus user interface: Gradio and plotly only; all work is done by tracer/ and editor/."""
