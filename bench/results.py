"""`python -m bench results`: run the commands behind the figures in the docs and write docs/RESULTS.md.

Each section names the exact command lines it runs (`python -m bench ...`, `python -m editor ...`,
`python -m tracer ...`, each in a process of its own, with `--out JSON` where the command has it), a quick
variant of them, and a renderer that turns what they wrote into markdown tables. A run of a section stores
its raw output and how it was made (the commands, date, CPU model, torch threads, Python, torch and
transformers versions, wall seconds) in docs/results/<name>.json; docs/RESULTS.md is rendered from all the
stored files, so `--only NAME` reruns one section and keeps the others.

    python -m bench results --list                      # the sections and their commands
    python -m bench results --quick                     # every section not stored yet, quick variants
    python -m bench results --only trace,edit --rerun   # two sections' full commands, run again
    python -m bench results --render                    # only rewrite docs/RESULTS.md from the stored files

Threads: the commands inherit the environment (set OMP_NUM_THREADS to choose); the stored metadata says
how many threads torch used. `$WORK` in a command is a temporary folder of that run, removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
STORE = DOCS / "results"
RESULTS_MD = DOCS / "RESULTS.md"
FORMAT = 1
WORK = "{work}"  # in a command's arguments: the run's temporary folder (shown as $WORK)
STDOUT_LINES = 150  # the last lines of a command's output kept in the stored file (damage lists up to 100 facts)
STDOUT_CHARACTERS = 16_000
DEVSET = "assets/devset_smollm2-135m-instruct.json"
LIFELONG = "assets/lifelong_counterfact.json"
EIFFEL = "The Eiffel Tower is located in the city of"
PROBE = (
    "import json, platform, sys, torch, transformers\n"
    "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,"
    " 'transformers': transformers.__version__, 'torch_threads': torch.get_num_threads()}))"
)


# --- sections -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """One command line, `python -m <args>`; `output` names the JSON file it writes under $WORK (stored whole)."""

    label: str
    args: tuple[str, ...]
    output: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def argv(self, work: Path) -> list[str]:
        return [sys.executable, "-m", *(argument.replace(WORK, str(work)) for argument in self.args)]

    def environment(self, work: Path) -> dict[str, str]:
        return {name: value.replace(WORK, str(work)) for name, value in self.env}

    def text(self) -> str:
        """The command as a reader types it ($WORK for the temporary folder)."""
        words = [f"{name}={value}" for name, value in self.env] + ["python", "-m", *self.args]
        return " ".join(shlex.quote(word.replace(WORK, "WORK")).replace("WORK", "$WORK") for word in words)


@dataclass(frozen=True)
class Section:
    """A table (or a few) in docs/RESULTS.md: its commands, their quick variant and how to render their output."""

    name: str
    title: str
    about: str
    full: tuple[Command, ...]
    quick: tuple[Command, ...]
    render: Callable[[dict], str]
    trim: Callable[[str, object], object] = field(default=lambda label, output: output)  # what of an output is stored
    independent: bool = False  # its commands use nothing of each other's: --jobs may run them side by side

    def commands(self, variant: str) -> tuple[Command, ...]:
        return self.quick if variant == "quick" else self.full


def out(name: str) -> str:
    return f"{WORK}/{name}"


def json_command(label: str, *args: str, output: str | None = None) -> Command:
    """A command that writes `output` (default `<label>.json`) through its `--out`."""
    name = output or f"{label}.json"
    return Command(label, (*args, "--out", out(name)), name)


# --- helpers for renderers --------------------------------------------------------------------------------

def output_of(record: dict, label: str):
    for command in record.get("commands", []):
        if command["label"] == label:
            return command.get("output")
    return None


def stdout_of(record: dict, label: str) -> str:
    for command in record.get("commands", []):
        if command["label"] == label:
            return command.get("stdout", "")
    return ""


def command_of(record: dict, label: str) -> dict | None:
    return next((command for command in record.get("commands", []) if command["label"] == label), None)


def number(value, digits: int = 1, suffix: str = "") -> str:
    """A figure for a table: `-` for a missing or non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) and digits == 0:
        return f"{value:,}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def scientific(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def layers_text(layers) -> str:
    layers = list(layers or [])
    if not layers:
        return "-"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(str(layer) for layer in layers)


def method_text(data: dict) -> str:
    """A result's method settings in a few words (`method_settings`; older outputs had `lambda`)."""
    if data.get("method_settings"):
        return data["method_settings"]
    return f"lambda {number(data['lambda'], 0)}" if data.get("lambda") is not None else "defaults"


SCORE_COLUMNS = (("ES", "ES"), ("PS", "PS"), ("NS", "NS"), ("S", "S"), ("eff. acc.", "efficacy_accuracy"),
                 ("nbr. acc.", "neighborhood_accuracy"))


def score_cells(scores: dict | None) -> list[str]:
    scores = scores or {}
    return [number(scores.get(key)) for _, key in SCORE_COLUMNS]


# --- renderers ----------------------------------------------------------------------------------------------

def render_trace(record: dict) -> str:
    data = output_of(record, "trace")
    if not data:
        return ""
    rows = []
    for case in data["cases"]:
        reference = f"{'~' if case['extrapolated'] else ''}{number(case['reference_seconds'])} s"
        if case["extrapolated"]:
            reference += f" ({case['reference_cells_timed']} of {case['cells']} cells timed, extrapolated)"
        rows.append([f"\"{case['prompt']}\"" if len(case["prompt"]) < 60 else f"a {case['tokens']}-token sentence",
                     case["tokens"], number(case["cells"], 0), reference, f"{number(case['fast_seconds'])} s",
                     f"{case['ratio']:.1f}x", scientific(case["max_abs_difference"])])
    preview = data["preview"]
    return "\n\n".join([
        f"{data['model']} on {data['device']}, {data['threads']} torch thread(s); kinds {', '.join(data['kinds'])}, "
        f"{data['samples']} samples, window {data['window']}. Machine load average {data['load_start']} at the start, "
        f"{data['load_end']} at the end.",
        table(["prompt", "tokens", "cells", "straightforward (reference)", "fast engine", "ratio", "max abs diff"], rows),
        f"The approximate preview (attribution patching) of the Eiffel prompt: {preview['first_seconds']:.2f} s the first "
        f"time, then {preview['median_seconds']:.2f} s (median of 3).",
    ])


def render_eiffel(record: dict) -> str:
    data = output_of(record, "eiffel")
    if not data:
        return ""
    tokens = data["tokens"]
    first, end = data["subject_range"]
    last_subject = end - 1
    rows = []
    for kind, matrix in data["scores"].items():
        cells = [(value, token, layer) for token, row in enumerate(matrix) for layer, value in enumerate(row) if value is not None]
        if not cells:
            continue
        value, token, layer = max(cells)
        at_last = [(row_value, row_layer) for row_layer, row_value in enumerate(matrix[last_subject]) if row_value is not None]
        best_last = max(at_last) if at_last else (None, None)
        rows.append([kind, f"{tokens[token]!r} (token {token}), layer {layer}", number(value, 3),
                     f"layer {best_last[1]}: {number(best_last[0], 3)}"])
    return "\n\n".join([
        f"\"{data['prompt']}\", subject \"{data['subject']}\" (tokens {first}-{end - 1}: "
        f"{' '.join(repr(token) for token in tokens[first:end])}); answer {data['answer']!r}; "
        f"clean p = {number(data['high'], 3)}, corrupted p = {number(data['low'], 3)}; {data['settings']['samples']} samples, "
        f"noise {number(data['noise_level'], 4)}, {data['engine']} engine, {number(data.get('elapsed'))} s.",
        table(["kind", "strongest restoration", "p restored", f"best at the last subject token {tokens[last_subject]!r}"], rows),
    ])


def render_edit(record: dict) -> str:
    data = output_of(record, "edit")
    if not data:
        return ""
    rows = []
    for label, scores in data["scores"].items():
        seconds = data.get(f"{label}_seconds")
        timing = ""
        if seconds:
            timing = (f"{sum(seconds.values()):,.1f} s (covariance {seconds['covariance']:.1f}, targets "
                      f"{seconds['targets']:.1f}, layers {seconds['layers']:.1f})")
        rows.append([label, *score_cells(scores), timing])
    batched, serial = data["batched_seconds"], data["straightforward_seconds"]
    agreement = data["agreement"]
    return "\n\n".join([
        f"{data['n']} dev-set edits in one MEMIT batch, R = {layers_text(data['layers'])}, lambda = {number(data['lambda'], 0)}, "
        f"covariance over {number(data['cov_tokens'], 0)} Wikipedia tokens (computed fresh for both ways), {data['model']} on "
        f"{data['device']}.",
        table(["", *(title for title, _ in SCORE_COLUMNS), "time"], rows),
        f"Batched is {data['speedup']:.2f}x faster (covariance {serial['covariance'] / batched['covariance']:.2f}x, targets "
        f"{serial['targets'] / batched['targets']:.2f}x); target vectors agree within "
        f"{scientific(agreement['max_target_difference_relative'])} (relative), layer updates within "
        f"{scientific(agreement['max_delta_difference_relative'])}.",
    ])


def render_levers(record: dict) -> str:
    """Each target-optimisation lever's speed-up over the defaults' target time, beside its quality."""
    data = output_of(record, "levers")
    if not data:
        return ""
    scores = data["scores"]

    def cells(summary: dict) -> list[str]:
        return [number(summary.get(key)) for key in LEVER_SCORES]

    rows = [["unedited", "", "", "", *cells(scores["unedited"])],
            ["defaults", number(data["batched_seconds"]["targets"]), "1.00x", number(data["batched_mean_steps"]),
             *cells(scores["batched"])]]
    for variant in data["variants"]:
        rows.append([variant["label"], number(variant["targets_seconds"]), f"{variant['ratio']:.2f}x", number(variant["mean_steps"]),
                     *cells(variant["scores"])])
    return "\n\n".join([
        f"{data['n']} dev-set edits in one MEMIT batch, R = {layers_text(data['layers'])}, lambda = {number(data['lambda'], 0)}, "
        f"{number(data['cov_tokens'], 0)} covariance tokens, {data['model']} on {data['device']}. Each row optimizes the same "
        "requests' target vectors with the settings it names changed (defaults: SPEC section 3, lr 0.5, at most 25 steps, "
        "stop below loss 0.05) and writes them with the same covariances. Speed-up: the defaults' target time over the "
        "row's, timed one after another in the same run (on a shared machine the load moves: the steps do not); steps: "
        "per request, the last evaluation included.",
        table(["target optimisation", "targets s", "speed-up", "steps", "ES", "PS", "NS", "ES-gen", "PS-gen"], rows),
        levers_verdict(data),
    ])


def levers_verdict(data: dict) -> str:
    """Which variants lose nothing against the defaults (ES, PS, NS and ES-gen at least theirs), and how many steps they save."""
    defaults = data["scores"]["batched"]
    keeping = [variant for variant in data["variants"]
               if all((variant["scores"].get(key) or 0) >= (defaults.get(key) or 0) for key in ("ES", "PS", "NS", "ES_gen"))]
    if not keeping:
        return "No variant keeps ES, PS, NS and ES-gen at the defaults' level or above on these records."
    steps = data["batched_mean_steps"]
    return "Variants that keep ES, PS, NS and ES-gen at the defaults' level or above: " + "; ".join(
        f"{variant['label']} ({number(variant['mean_steps'])} steps per request against {number(steps)}, "
        f"{steps / variant['mean_steps']:.2f}x fewer)" for variant in keeping) + "."


LEVER_SCORES = ("ES", "PS", "NS", "ES_gen", "PS_gen")
LEVER_VARIANTS = ("--variants", "lr=1", "lr=2", "early_stop_steps=2", "first_step=0.5", "first_step=0.5,lr=1")


def sweep_table(data: dict) -> str:
    rows = [["unedited", "", *score_cells(data["unedited"]), number(data.get("residual_before"))]]
    for row in data["rows"]:
        rows.append([number(row["cov_tokens"], 0), number(row.get("lambda", row.get("mom2_weight")), 0),
                     *score_cells(row["scores"]), number(row.get("residual_left"))])
    return "\n\n".join([
        f"{data['n']} records in one {data['method']} batch, R = {layers_text(data['layers'])}; target vectors optimized once "
        f"({number(data.get('target_seconds'))} s), then one solve per setting. \"left\": mean ||z - h|| the updates did not "
        "write (the first row: before any update).",
        table(["covariance tokens", "lambda", *(title for title, _ in SCORE_COLUMNS), "left"], rows),
    ])


def render_sweep(record: dict) -> str:
    data = output_of(record, "sweep")
    return sweep_table(data) if data else ""


def render_stats(record: dict) -> str:
    text = stdout_of(record, "stats")
    eigen_rows, null_rows, thresholds, in_null = [], [], [], False
    for line in text.splitlines():
        words = line.split()
        if line.startswith("AlphaEdit's null space"):
            in_null = True
            continue
        if words[:1] == ["layer"] and in_null:
            thresholds = re.findall(r"<\s*(\S+)", line)
            continue
        if not words or not words[0].isdigit():
            continue
        if in_null:
            cells = re.findall(r"(\d+)/(\d+)\s+(\S+%)", line)
            null_rows.append([words[0], *(f"{size} of {total} directions, {share} of the energy" for size, total, share in cells)])
        elif len(words) >= 6:
            eigen_rows.append(words[:6])
    parts = []
    if eigen_rows:
        parts.append(table(["layer", "tokens", "largest eigenvalue", "smallest eigenvalue", "condition", "trace"], eigen_rows))
    if null_rows:
        parts.append("AlphaEdit's null space at each threshold: the directions of C with a smaller eigenvalue, and the "
                     "share of ordinary text's key energy (trace C) in them (0% for a true null space).")
        parts.append(table(["layer", *(f"eigenvalue < {threshold}" for threshold in thresholds)], null_rows))
    warnings = [line for line in text.splitlines() if line.startswith("warning")]
    parts += [f"> {line}" for line in warnings]
    return "\n\n".join(parts)


def render_layers(record: dict) -> str:
    data = output_of(record, "layers")
    if not data:
        return ""
    recommended, best = data.get("tracing_recommended"), data.get("editing_best")
    rows = [["unedited", "", *score_cells(data["unedited"])[:4], "", ""]]
    for window in data["windows"]:
        mark = " (tracing)" if window["layers"] == recommended else ""
        mark += " (editing best)" if window["layers"] == best else ""
        rows.append([layers_text(window["layers"]) + mark, number(window.get("trace_effect"), 3),
                     *(number(window.get(key)) for key in ("ES", "PS", "NS", "S")), number(window.get("residual_left")),
                     number(window.get("seconds"), 0)])
    correlation = data.get("rank_correlation")
    return "\n\n".join([
        f"{data['n']} dev-set records edited in one {data['method']} batch at each window R ({method_text(data)}, "
        f"{number(data['cov_tokens'], 0)} covariance tokens), beside the tracing curve (MLP effect at the last subject token, "
        f"averaged over {data['trace_facts']} known facts, summed over the window). {data.get('cached_windows', 0)} window(s) "
        f"came from the cache; targets {number(data.get('target_seconds'), 0)} s, all {number(data.get('seconds'), 0)} s.",
        table(["R", "trace effect", "ES", "PS", "NS", "S", "left", "seconds"], rows),
        f"Tracing recommends {layers_text(recommended)}; editing scored best at {layers_text(best)}"
        f"{'' if correlation is None else f'; rank correlation of the tracing curve and S over these windows {correlation:+.2f}'}. "
        f"{data.get('explanation', '')}",
    ])


def render_precision(record: dict) -> str:
    rows, edited = [], {}
    for label in ("float32", "bfloat16"):
        data = output_of(record, label)
        if not data:
            continue
        edited[label] = data["post"]
        rows.append([f"{label}, unedited", *score_cells(data["pre"]), ""])
        rows.append([f"{label}, edited", *score_cells(data["post"]), f"{number(data.get('edit_seconds'))} s"])
    if not rows:
        return ""
    first = output_of(record, "float32") or output_of(record, "bfloat16")
    parts = [f"{first['n']} dev-set records in one {first['method']} batch, R = {layers_text(first['layers'])}, "
             f"{method_text(first)}, {number(first['cov_tokens'], 0)} covariance tokens; the same command in each dtype.",
             table(["dtype", *(title for title, _ in SCORE_COLUMNS), "edit time"], rows)]
    if len(edited) == 2:
        gap = max(abs((edited["float32"].get(key) or 0) - (edited["bfloat16"].get(key) or 0)) for key in ("ES", "PS", "NS"))
        parts.append(f"Largest difference of the edited ES/PS/NS between bfloat16 and float32: {gap:.1f} points.")
    return "\n\n".join(parts)


def render_methods(record: dict) -> str:
    rows = []
    for command in record.get("commands", []):
        data = command.get("output")
        if not data:
            continue
        rows.append([data["method"], data["n"], layers_text(data["layers"]), method_text(data),
                     *(number(data["post"].get(key)) for key in ("ES", "PS", "NS", "neighborhood_accuracy")),
                     number(data.get("edit_seconds"), 0)])
    if not rows:
        return ""
    first = next(command["output"] for command in record["commands"] if command.get("output"))
    return "\n\n".join([
        f"Each row: dev-set records edited in one batch by the method, then scored (unedited: ES "
        f"{number(first['pre'].get('ES'))}, PS {number(first['pre'].get('PS'))}, NS {number(first['pre'].get('NS'))} on the "
        f"first {first['n']} records).",
        table(["method", "records", "R", "settings", "ES", "PS", "NS", "nbr. acc.", "edit s"], rows),
    ])


SEQUENTIAL_RUNS = (("memit", "MEMIT (lambda 1,500)"), ("alphaedit", "AlphaEdit (defaults)"),
                   ("encore", "ENCORE (norm 20, the paper's)"), ("encore-norm10", "ENCORE, norm 10"))
# (label, title, R, the run's own settings); the new editors first: --jobs 2 runs them side by side. UltraEdit at
# R 24-28 with eta 3e-4: its defaults (eta 1e-6, chosen for 7-27B models) write nothing on SmolLM2 (LIFELONG.md).
EDITOR_RUNS = (("nas", "NAS (on AlphaEdit)", "1-5", ("--method", "nas")),
               ("rlsedit", "RLSEdit", "1-5", ("--method", "rlsedit")),
               ("encore-norm10", "ENCORE", "1-5", ("--method", "encore", "--norm-lambda", "10")),
               ("ultraedit", "UltraEdit", "24-28", ("--method", "ultraedit", "--step-size", "3e-4")))


def render_editors(record: dict) -> str:
    """The last kept batch of each editor's run, with success by generation beside the teacher-forced scores."""
    from editor.methods.registry import method_from_dict  # lazy: the method classes import torch
    rows, unedited, settings = [], None, {}
    for label, title, _, _ in EDITOR_RUNS:
        data = output_of(record, label)
        if not data:
            continue
        unedited, settings = unedited or data["unedited"], settings or data["settings"]
        run = [title + (" (stopped)" if data.get("stopped") else ""), layers_text(data["settings"]["layers"]),
               method_from_dict(data["settings"]["hparams"]).describe()]
        if not data["batches"]:
            rows.append([*run, 0, *["-"] * 9])
            continue
        last = data["batches"][-1]
        rows.append([
            *run, number(last["edits"], 0),
            *(number(last.get(key)) for key in ("ES", "ES_gen", "PS", "PS_gen")),
            f"{number(last['NS'])} ({number((last.get('unedited_so_far') or {}).get('NS'))})",
            f"x{last['perplexity_ratio']:.3f}", f"{number(last['retention'], 0)}%",
            f"x{max(last['norm_growth'].values()):.3f}" if last.get("norm_growth") else "-",
            number(sum(row.get("seconds", 0) for row in data["batches"]) / len(data["batches"]), 0),
        ])
    if not rows:
        return ""
    return "\n\n".join([
        f"Batches of {settings.get('batch_size', '?')} records of {Path(str(settings.get('data', '?'))).name}, each "
        "computed with the earlier ones applied; the last kept batch of each run (over every edit so far). ES-gen/PS-gen: "
        "success when greedy generation from the prompt alone starts with the new object (SPEC section 6). Unedited: "
        f"retention {number(unedited.get('retention'), 0)}% of {unedited.get('probes', '?')} known facts; NS in brackets: "
        "the unedited model on the same records. Targets at 1,000 edits: ES >= 90, ES-gen >= 70, PS >= 80, NS >= unedited "
        "- 10, perplexity <= x1.10, retention >= 75%.",
        table(["method", "R", "settings", "edits", "ES", "ES-gen", "PS", "PS-gen", "NS (unedited)", "perplexity", "retention",
               "largest norm growth", "seconds per batch"], rows),
    ])


def editor_commands(batch_size: str, batches: str, extra: tuple[str, ...], own: dict[str, tuple[str, ...]]) -> tuple[Command, ...]:
    """One sequential run per lifelong editor on the same records, each measuring the unedited model itself (so the
    runs are independent and --jobs can run them side by side); --resume continues a run kept in --work."""
    base = ("editor", "sequential", "--data", LIFELONG, "--batch-size", batch_size, "--batches", batches)
    commands = []
    for label, _, layers, settings in EDITOR_RUNS:
        run = (*base, "--layers", layers, "--resume", *extra, *settings, *own.get(label, ()))
        commands.append(Command(label, (*run, "--out", out(f"{label}.json"),
                                        "--ledger-out", out(f"{label}.safetensors")), f"{label}.json"))
    return tuple(commands)


def render_lifelong(record: dict) -> str:
    parts, rows, unedited = [], [], None
    for label, title in SEQUENTIAL_RUNS:
        data = output_of(record, label)
        if not data:
            continue
        unedited = unedited or data["unedited"]
        if not data["batches"]:
            rows.append([title, 0, "-", "-", "-", "-", "-", "-", "-", "-"])
            continue
        last = data["batches"][-1]
        ledger = last.get("ledger_bytes") or {}
        per_edit = ledger.get("batches", 0) / last["edits"] if last.get("edits") else None
        rows.append([
            title + (" (stopped)" if data.get("stopped") else ""), number(last["edits"], 0), number(last["ES"]), number(last["PS"]),
            f"{number(last['NS'])} ({number((last.get('unedited_so_far') or {}).get('NS'))})",
            f"{number(last['perplexity'], 2)} (x{last['perplexity_ratio']:.3f})", f"{number(last['retention'], 0)}%",
            f"x{max(last['norm_growth'].values()):.3f}" if last.get("norm_growth") else "-",
            f"{per_edit / 1e3:,.1f} KB + {ledger.get('cache', 0) / 1e6:,.1f} MB" if per_edit else "-",
            number(last.get("elapsed_seconds"), 0),
        ])
    if rows:
        settings = (output_of(record, SEQUENTIAL_RUNS[0][0]) or {}).get("settings", {})
        parts.append(f"Batches of {settings.get('batch_size', '?')} records of {Path(str(settings.get('data', '?'))).name}, "
                     f"each computed with the earlier ones applied; the last kept batch of each run. Unedited: perplexity "
                     f"{number(unedited.get('perplexity'), 2)} on the held-out texts, retention "
                     f"{number(unedited.get('retention'), 0)}% of {unedited.get('probes', '?')} known facts. NS in brackets: "
                     "the unedited model on the same records. Ledger: bytes held per edit, plus the edited matrices once.")
        parts.append(table(["method", "edits", "ES", "PS", "NS (unedited)", "perplexity", "retention", "largest norm growth",
                            "ledger", "seconds of the batches"], rows))
        stopped = [f"> {title}: {output_of(record, label)['stopped']}" for label, title in SEQUENTIAL_RUNS
                   if output_of(record, label) and output_of(record, label).get("stopped")]
        parts += stopped
    damage_rows, margin = [], "?"
    for label, what in (("damage-first", "after the first batch"), ("damage-all", "after every batch")):
        data = output_of(record, label)
        if not data:
            continue
        # the command's own summary line says how it counts a barely known fact
        said = re.search(r"(\d+) of them known by less than ([0-9.]+) in log-probability", stdout_of(record, label))
        margin = said.group(2) if said else margin
        control = "; ".join(f"x{scale}: {', '.join(f'{value:.0f}' for value in values)}"
                            for scale, values in (data.get("random_retention") or {}).items())
        damage_rows.append([what, number(data["edits"], 0), f"{number(data['retention'], 0)}% of {data['probes']}",
                            f"{len(data.get('forgotten', []))} ({said.group(1) if said else '-'})", data.get("fragile", "-"),
                            control or "-"])
    if damage_rows:
        parts.append("Why retention falls (`editor damage` on the ENCORE norm-10 ledger): the probe facts lost, how many of "
                     f"them (and of all probes) the unedited model knew by less than {margin} in log-probability (fragile), "
                     "and the retention under random updates of each edited matrix with the same Frobenius norm x a scale "
                     "(one figure per seed).")
        parts.append(table(["ledger", "edits", "retention", "facts lost (fragile)", "fragile probes", "random updates: retention"],
                           damage_rows))
    return "\n\n".join(parts)


def trim_lifelong(label: str, data):
    """Sequential runs without the per-record and per-fact lists (the renderer needs neither)."""
    if not isinstance(data, dict) or "batches" not in data:
        return data
    data = {key: value for key, value in data.items() if key != "unedited_records"}
    data["batches"] = [{**row, "forgotten": len(row.get("forgotten") or [])} for row in data["batches"]]
    if isinstance(data.get("collapse"), dict):
        data["collapse"] = {**data["collapse"], "forgotten": len(data["collapse"].get("forgotten") or [])}
    return data


def trim_records(label: str, data):
    """An evaluation without its per-record list (the renderers use the summaries)."""
    return {key: value for key, value in data.items() if key != "records"} if isinstance(data, dict) else data


def render_soak(record: dict) -> str:
    data = output_of(record, "soak")
    if not data:
        return ""
    settings = data["settings"]
    rows = [[row["endpoint"], row["requests"], row["failed"], f"{row['p50']:.1f} s", f"{row['p95']:.1f} s", f"{row['max']:.1f} s"]
            for row in data["stats"]]
    checks = data.get("final_checks", {})
    startup = data.get("startup") or {}
    load_before, load_after = data.get("load_before") or [], data.get("load_after") or []
    return "\n\n".join([
        f"app.py on loopback; {settings['visitors']} gradio_client visitors for {settings['seconds']:g} s, each looping predict, "
        f"a preview trace, a refused bad input, its own edit ({settings['steps']} steps) and its undo; then each visitor "
        "predicts every visitor's prompt. Latencies include waiting for the one model thread.",
        table(["endpoint", "requests", "failed", "p50", "p95", "max"], rows),
        f"{sum(row['requests'] for row in data['stats'])} requests in {data['seconds']:.0f} s; final predictions matching the "
        f"visitor's own edits: {checks.get('matched', '-')} of {checks.get('total', '-')}; server RSS {mib(data.get('rss_start'))} "
        f"after the warm-up, peak {mib(data.get('rss_peak'))} (the second half's peak minus the first half's: "
        f"{mib(data.get('rss_late_growth'))}); {'PASS' if data.get('passed') else 'FAIL'}. Load average "
        f"{'/'.join(f'{x:.1f}' for x in load_before)} before, {'/'.join(f'{x:.1f}' for x in load_after)} after.",
        f"Start-up (model cache already built): the page was served {number(startup.get('serving_seconds'))} s and the model "
        f"ready {number(startup.get('ready_seconds'))} s after app.py started.",
    ])


def trim_soak(label: str, data):
    """The soak report without its per-request records and RSS samples (the summary rows stay)."""
    if not isinstance(data, dict):
        return data
    checks = data.get("final_checks") or []
    data = {key: value for key, value in data.items() if key not in ("records", "rss_samples", "final_checks")}
    data["final_checks"] = {"total": len(checks), "matched": sum(bool(check.get("ok")) for check in checks)}
    return data


def render_cache(record: dict) -> str:
    command = command_of(record, "cache")
    if not command:
        return ""
    said = [line.strip().rstrip(".") for line in command.get("stdout", "").splitlines() if "ready in" in line]
    return (f"A fresh cache folder: the packaged GGUF dequantized into safetensors in {command['seconds']:.1f} s (wall, "
            f"with Python's start and imports){f'; the command says: `{said[-1]}`' if said else ''}.")


def render_shapes(record: dict) -> str:
    data = output_of(record, "shapes")
    if not data:
        return ""
    rows = [[row["stage"], number(row["seconds"]), row["rate"], gib(row["peak_bytes"]), row["detail"]] for row in data["rows"]]
    return "\n\n".join([
        f"{data['shape']} shape{' (tiny)' if data['tiny'] else ''} with random weights on {data['device']}, {data['dtype']}, "
        f"{data['threads']} torch thread(s); {data['seconds']:.0f} s in all. Peak memory is cumulative on a CPU (resident set).",
        table(["stage", "seconds", "rate", "peak memory", "detail"], rows),
    ])


def render_scale(record: dict) -> str:
    data = output_of(record, "scale")
    if not data:
        return ""
    rows = [[run["run"], run["workers"], run["threads"], number(run["start_seconds"]), number(run["run_seconds"]),
             f"{run['speedup']:.2f}x", f"{run['max_abs_difference']:.3g}"] for run in data["runs"]]
    parts = [f"An average of {data['facts']} traces (kinds {', '.join(data['kinds'])}, {data['samples']} samples) on "
             f"{data['cores']} cores, in one process and on local Ray workers.",
             table(["run", "workers", "threads", "start s", "run s", "speed-up", "max abs diff"], rows),
             f"Largest difference from the one-thread process: {data['largest_difference']:.3g} (bound {data['bound']:g}: "
             f"{'agree' if data['agree'] else 'DISAGREE'}; float32 rounding, since other thread counts reduce in another order)."]
    estimate = data.get("estimate")
    if estimate:
        parts.append(f"Driver cost per fact {estimate['driver_seconds_per_fact'] * 1e3:.2f} ms; 8 workers on a "
                     f"{estimate['job_facts']}-fact job at the per-fact time measured here: about "
                     f"{estimate['eight_workers_seconds'] / 60:.1f} min ({estimate['one_worker_seconds'] / 60:.1f} min on one).")
    return "\n\n".join(parts)


def render_fidelity(record: dict) -> str:
    data = output_of(record, "fidelity")
    if not data:
        return ("Not run here: the command needs LOCUS_ALPHAEDIT_PUBLISHED, a patched copy of the published code "
                "(docs/FIDELITY.md says how to make one).")
    runs = data["published"]
    settings = table(["setting", "published (file / code)", "Locus (as run)"], [list(row) for row in data["settings"]])
    layers = [str(layer) for layer in data["layers"]]
    differences = [[variant if index == 0 else "", f"batch {index + 1}",
                    *(f"{per_layer[layer]['relative_difference']:.1e}" for layer in layers)]
                   for variant, run in runs.items() for index, per_layer in enumerate(run["differences"])]
    weights = table(["published code", "after", *(f"L{layer}" for layer in layers)], differences)
    score_rows = [["unedited", 0, *(number(data["unedited"][key]) for key in ("ES", "PS", "NS", "S", "retention"))]]
    for index in range(data["batches"]):
        edits = (index + 1) * data["records"]
        rows = [("Locus", data["locus"][index])] + [(f"published ({variant})", run["batches"][index]) for variant, run in runs.items()]
        score_rows += [[f"{who}, batch {index + 1}", edits, *(number(row[key]) for key in ("ES", "PS", "NS", "S", "retention")),
                        number(row["seconds"], 0)] for who, row in rows]
    scores = table(["", "edits", "ES", "PS", "NS", "S", "retention", "wall s"], score_rows)
    sizes = ", ".join(f"{variant} {run['nullspace_size']}" for variant, run in runs.items())
    return "\n\n".join([
        f"{data['model']} on {data['device']} ({data['threads']} thread), {data['batches']} batches of {data['records']} "
        f"records of {data['data']}, R = {data['layers']}. Both sides' settings:", settings,
        "Relative difference of the edited weights, ||W_Locus - W_published||_F / ||W_published - W_original||_F per edited "
        "layer (variants put Locus's deliberate differences into the published code one after another: equal-keys = the "
        "prefix keys weighted 1/6 each; +kl = KL(original || edited); matched = also the null space from the float64 C):",
        weights,
        f"Null-space sizes per layer: Locus {data['locus_nullspace_size']}; published: {sizes}.",
        "Scores by Locus's evaluator for both (ES/PS/NS over the edits so far; retention of 100 known facts; wall seconds on a "
        "shared machine, C cached and not timed):", scores,
        "Every difference is explained in docs/FIDELITY.md."])


def render_preempt(record: dict) -> str:
    data = output_of(record, "preempt")
    if not data:
        return ""

    def quantile(values: list[float], q: float):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else None

    rows = [[run["mode"], len(run["latencies"]), number(quantile(run["latencies"], 0.5), 2),
             number(quantile(run["latencies"], 0.95), 2), number(max(run["latencies"], default=None), 2),
             number(run["trace_seconds"] or None, 0), len(run["failures"])] for run in data["runs"]]
    arguments = data["arguments"]
    return "\n\n".join([
        f"{arguments['visitors']} visitor(s) calling /predict every {arguments['think']:g} s while another runs an exact trace "
        f"({arguments['kinds']}, {arguments['samples']} samples) on the real app ({arguments['threads']} torch threads); "
        "latency in seconds, nearest-rank percentiles.",
        table(["run", "predictions", "p50 s", "p95 s", "max s", "trace s", "failed"], rows),
        f"Interrupted trace against the uninterrupted one (same server): max abs diff {data['max_abs_diff']:.3g} over every "
        "score (0 = bit-identical). Goal (issue 22): p95 within 5 s on 2 cores while the trace runs."])


def render_lecture(record: dict) -> str:
    data = output_of(record, "lecture")
    if not data:
        return ""
    rows = [[check["name"], number(check["seconds"], 1), number(check["seconds"] / data["budget_seconds"], 2),
             "yes" if check["within_budget"] else "NO",
             "-" if check["worst_estimate_error"] is None else f"{100 * check['worst_estimate_error']:.0f}%", check["detail"]]
            for check in data["checks"]]
    return "\n\n".join([
        f"Covariance statistics of the layers involved were ready in {data['covariance_seconds']:.1f} s before the checks "
        "(cached; not counted). Estimate error: the largest error of the job line's estimated total time (elapsed / share "
        f"done) over the progress reports after the first {100 * data['settled']:.0f}% of the time.",
        table(["check", "seconds", f"/ {data['budget_seconds']:.0f} s", "within 3 min", "estimate error", "detail"], rows),
        "Goal (issue 22): each within 3 minutes on 2 CPU cores once the covariance is cached."])


def render_gpu(record: dict) -> str:
    data = output_of(record, "gpu")
    if not data:
        return ""
    rows = [[row["check"], row["target"] or "", "" if row["met"] is None or not data["judged"] else ("met" if row["met"] else "MISSED"),
             row["measured"]] for row in data["rows"]]
    note = "" if data["judged"] else (" A dry run (CPU or --quick): tiny sizes, so the targets are not judged; it shows "
                                      "that every stage runs, not how fast a GPU is.")
    return "\n\n".join([f"Device: {data['device_name']} ({data['device']}); {data['seconds']:.0f} s in all.{note}",
                        table(["check", "target", "", "measured"], rows)])


SECTIONS: tuple[Section, ...] = (
    Section(
        "trace", "Causal tracing speed and the preview",
        "The fast exact engine against the straightforward algorithm of the published code (one forward pass of the "
        "noisy rows per cell), interleaved in one run on the embedded model: all three kinds, 10 samples, window 10. "
        "Where the reference would take too long it is timed on a random share of the cells and extrapolated.",
        full=(json_command("trace", "bench", "trace"),),
        quick=(json_command("trace", "bench", "trace", "--quick", "--cases", "short"),),
        render=render_trace,
    ),
    Section(
        "eiffel", "Where the Eiffel Tower fact lives",
        "One causal trace of the README's example on the embedded model: the strongest restoration per kind, and the best "
        "layer at the last subject token (SPEC section 5: on SmolLM2 the MLP peak is not at the last subject token).",
        full=(json_command("eiffel", "tracer", "trace", "--prompt", EIFFEL, "--subject", "Eiffel Tower"),),
        quick=(json_command("eiffel", "tracer", "trace", "--prompt", EIFFEL, "--subject", "Eiffel Tower", "--kinds", "mlp"),),
        render=render_eiffel,
    ),
    Section(
        "edit", "Editing speed and quality: batched against the straightforward way",
        "Dev-set records (CounterFact rewrites of facts the embedded model knows) edited in one MEMIT batch, against the "
        "straightforward way (a corpus pass per layer, targets optimized one request at a time, every row run through every "
        "block) in the same run; both scored on the same records.",
        full=(json_command("edit", "bench", "edit"),),
        quick=(json_command("edit", "bench", "edit", "--n", "3", "--tokens", "5000"),),
        render=render_edit,
    ),
    Section(
        "levers", "Faster target vectors at equal quality?",
        "The target vectors take most of an edit's time. Levers that shorten their optimisation (a larger Adam step, "
        "stopping once the new object leads, a first step straight down the gradient to half the clamp radius), each "
        "measured against the defaults in the same run on the same records, with the quality it leaves "
        "(`bench edit --variants`).",
        full=(json_command("levers", "bench", "edit", "--n", "100", "--no-straightforward", *LEVER_VARIANTS),),
        quick=(json_command("levers", "bench", "edit", "--n", "40", "--no-straightforward", *LEVER_VARIANTS),),
        render=render_levers,
    ),
    Section(
        "budget", "Covariance budget",
        "Edit quality against the number of Wikipedia tokens behind C (`editor sweep`): the target vectors are optimized "
        "once and each budget's C gives one solve.",
        full=(json_command("sweep", "editor", "sweep", "--data", DEVSET, "--tokens", "5000,10000,25000,50000,100000,200000"),),
        quick=(json_command("sweep", "editor", "sweep", "--data", DEVSET, "--limit", "6", "--tokens", "2000,5000"),),
        render=render_sweep,
    ),
    Section(
        "lambda", "lambda (the covariance weight)",
        "Edit quality against lambda at the default covariance budget (`editor sweep --lambda`).",
        full=(json_command("sweep", "editor", "sweep", "--data", DEVSET, "--tokens", "50000", "--lambda", "500,1500,15000"),),
        quick=(json_command("sweep", "editor", "sweep", "--data", DEVSET, "--limit", "6", "--tokens", "5000",
                            "--lambda", "500,1500,15000"),),
        render=render_sweep,
    ),
    Section(
        "stats", "Covariance statistics and AlphaEdit's null space",
        "C = E[k k^T] of the MLP output projection's inputs per layer (its eigenvalues; SPEC section 5: layer 2 of SmolLM2 "
        "has an outlier direction), and how null the null space AlphaEdit projects onto really is.",
        full=(Command("stats", ("editor", "stats", "--layers", "1-6", "--nullspace", "0.005,0.01,0.02")),),
        quick=(Command("stats", ("editor", "stats", "--layers", "1-6", "--tokens", "5000", "--nullspace", "0.005,0.01,0.02")),),
        render=render_stats,
    ),
    Section(
        "layers", "R measured by editing",
        "The same dev-set records edited at each window R (`editor layers`), scored, and set beside the tracing curve; the "
        "tracing-recommended R against the R that edited best.",
        full=(json_command("layers", "editor", "layers", "--data", DEVSET, "--windows", "all", "--limit", "20"),),
        quick=(json_command("layers", "editor", "layers", "--data", DEVSET, "--windows", "1-5,10-14,20-24", "--limit", "3",
                            "--tokens", "5000"),),
        render=render_layers,
    ),
    Section(
        "precision", "bfloat16 against float32",
        "The same batch of dev-set edits evaluated in float32 and in bfloat16 (`editor evaluate --dtype`).",
        full=(json_command("float32", "editor", "evaluate", "--data", DEVSET, "--mode", "batch", "--no-generation",
                           "--dtype", "float32"),
              json_command("bfloat16", "editor", "evaluate", "--data", DEVSET, "--mode", "batch", "--no-generation",
                           "--dtype", "bfloat16")),
        quick=(json_command("float32", "editor", "evaluate", "--data", DEVSET, "--mode", "batch", "--no-generation",
                            "--dtype", "float32", "--limit", "6", "--tokens", "5000"),
               json_command("bfloat16", "editor", "evaluate", "--data", DEVSET, "--mode", "batch", "--no-generation",
                            "--dtype", "bfloat16", "--limit", "6", "--tokens", "5000")),
        render=render_precision,
        trim=trim_records,
    ),
)


def evaluate_command(label: str, limit: str, layers: str, *settings: str) -> Command:
    return json_command(label, "editor", "evaluate", "--data", DEVSET, "--limit", limit, "--no-generation", "--layers", layers,
                        *settings)


METHOD_CHECKS_QUICK = (
    evaluate_command("nas", "3", "1-5", "--method", "nas", "--set", "anchor_samples=24"),
    evaluate_command("rlsedit", "3", "1-5", "--method", "rlsedit"),
    evaluate_command("rlsedit-15000", "3", "1-5", "--method", "rlsedit", "--lambda", "15000"),
    evaluate_command("ultraedit", "3", "1-5", "--method", "ultraedit"),
    evaluate_command("ultraedit-3e-4", "3", "24-28", "--method", "ultraedit", "--step-size", "3e-4"),
    evaluate_command("ultraedit-1e-3", "3", "24-28", "--method", "ultraedit", "--step-size", "1e-3"),
)
METHOD_CHECKS_FULL = (
    evaluate_command("nas", "10", "1-5", "--method", "nas"),
    evaluate_command("rlsedit", "10", "1-5", "--method", "rlsedit"),
    evaluate_command("rlsedit-15000", "10", "1-5", "--method", "rlsedit", "--lambda", "15000"),
    evaluate_command("ultraedit", "10", "1-5", "--method", "ultraedit"),
    evaluate_command("ultraedit-3e-4", "10", "24-28", "--method", "ultraedit", "--step-size", "3e-4"),
    evaluate_command("ultraedit-1e-3", "10", "24-28", "--method", "ultraedit", "--step-size", "1e-3"),
)


def lifelong_commands(batch_size: str, batches: str, extra: tuple[str, ...], damage: tuple[str, ...]) -> tuple[Command, ...]:
    """Sequential runs of every method on the same records (the first measures the unedited model; the others reuse it),
    then `editor damage` on the ENCORE norm-10 ledger after its first batch and after all of them."""
    base = ("editor", "sequential", "--data", LIFELONG, "--batch-size", batch_size, "--batches", batches, "--layers", "1-5",
            *extra)
    commands = []
    for label, _ in SEQUENTIAL_RUNS:
        method, _, norm = label.partition("-norm")
        settings = ("--method", method, *(("--norm-lambda", norm) if norm else ()))
        reuse = ("--unedited-from", out(f"{SEQUENTIAL_RUNS[0][0]}.json")) if commands else ()
        commands.append(Command(label, (*base, *settings, *reuse, "--out", out(f"{label}.json"),
                                        "--ledger-out", out(f"{label}.safetensors")), f"{label}.json"))
    records = str(int(batch_size) * int(batches))
    ledger = ("editor", "damage", "--ledger", out("encore-norm10.safetensors"), "--data", LIFELONG, "--limit", records, *damage)
    commands.append(json_command("damage-first", *ledger, "--batches", "1"))
    commands.append(json_command("damage-all", *ledger))
    return tuple(commands)


SECTIONS += (
    Section(
        "lifelong", "Lifelong (sequential) editing and why retention falls",
        "Batch after batch of the lifelong set, each computed with the earlier ones applied (`editor sequential`, SPEC "
        "section 6), with R = 1-5 (the packaged recommendation): after each batch ES/PS/NS over every edit so far, perplexity "
        "on the held-out Wikipedia texts, retention of known facts that are never edited, the edited matrices' norms and "
        "the ledger's size. Then `editor damage`: which known facts the edits broke, against random updates of the same size.",
        full=lifelong_commands("100", "10", (), ()),
        quick=lifelong_commands("5", "2", ("--tokens", "5000"), ("--scales", "1", "--seeds", "1")),
        render=render_lifelong,
        trim=trim_lifelong,
    ),
    Section(
        "editors", "The lifelong editors over 1,000 edits, judged by generation too",
        "ENCORE (norm 10, the best of the earlier runs), NAS, RLSEdit and UltraEdit edit the lifelong set batch after batch "
        "(`editor sequential`; R = 1-5, UltraEdit at R = 24-28 with step 3e-4, where it writes: its default step, chosen "
        "for 7-27B models, changes nothing here), with ES/PS/NS and success by generation over every edit so far, perplexity, "
        "retention and norm growth after each batch (docs/LIFELONG.md has the methods' rules).",
        full=editor_commands("100", "10", (), {}),
        quick=editor_commands("5", "2", ("--tokens", "5000"), {"nas": ("--set", "anchor_samples=10")}),
        render=render_editors,
        trim=trim_lifelong,
        independent=True,
    ),
    Section(
        "methods", "The lifelong editors on the embedded model: one batch",
        "NAS, RLSEdit and UltraEdit (docs/LIFELONG.md) each edit the first dev-set records in one batch (`editor evaluate`): "
        "the checks LIFELONG.md describes, at the defaults and at the settings it discusses.",
        full=METHOD_CHECKS_FULL,
        quick=METHOD_CHECKS_QUICK,
        render=render_methods,
        trim=trim_records,
    ),
    Section(
        "soak", "Many visitors at once, and start-up",
        "The real app on loopback with simulated visitors, each its own session (`bench soak`); also when the page was "
        "served and the model ready after app.py started (a second start: the model cache is already built).",
        full=(Command("soak", ("bench", "soak", "--visitors", "4", "--seconds", "120", "--threads", "1", "--json",
                               out("soak.json")), "soak.json"),),
        quick=(Command("soak", ("bench", "soak", "--visitors", "2", "--seconds", "30", "--threads", "1", "--json",
                                out("soak.json")), "soak.json"),),
        render=render_soak,
        trim=trim_soak,
    ),
    Section(
        "preempt", "A visitor's prediction while another visitor traces",
        "The real app on loopback: one visitor runs an exact trace of every kind while another predicts, with long jobs "
        "pausing at safe points for other visitors' short ones (the default), against the same trace alone and against "
        "`app.py --no-preempt` (`bench soak --with-trace`, i.e. `bench preempt`).",
        full=(Command("preempt", ("bench", "soak", "--with-trace", "--json", out("preempt.json")), "preempt.json"),),
        quick=(Command("preempt", ("bench", "soak", "--with-trace", "--samples", "3", "--idle", "3", "--json",
                                   out("preempt.json")), "preempt.json"),),
        render=render_preempt,
    ),
    Section(
        "lecture", "The two long checks of a lecture",
        "Model health after one edit (Test tab: original, then edited, nothing remembered) and R measured by editing with "
        "one dev-set record at 5 windows (Choose R tab, window cache off), through the app's own services on the embedded "
        "model, with how far the progress line's time estimate was off (`bench lecture`; the quick variant is the same).",
        full=(json_command("lecture", "bench", "lecture"),),
        quick=(json_command("lecture", "bench", "lecture"),),
        render=render_lecture,
    ),
    Section(
        "cache", "First start: building the model cache",
        "What the first `make run` adds once: the embedded model's safetensors cache, built in an empty cache folder "
        "(the quick variant is the same command).",
        full=(Command("cache", ("tracer", "cache-model"), env=(("LOCUS_CACHE", out("cache")),)),),
        quick=(Command("cache", ("tracer", "cache-model"), env=(("LOCUS_CACHE", out("cache")),)),),
        render=render_cache,
    ),
    Section(
        "shapes", "A GPT-2 XL-sized model on this machine",
        "A model of GPT-2 XL's shape with random weights (`bench shapes`): a trace (timed on a subset of its cells on a CPU, "
        "extrapolated by work), the target optimization, a covariance pass, dev-set edits end to end, and peak memory.",
        full=(json_command("shapes", "bench", "shapes", "--shape", "gpt2-xl", "--edits", "20", "--edit-steps", "2",
                           "--cov-tokens", "2000"),),
        quick=(json_command("shapes", "bench", "shapes", "--shape", "gpt2-xl", "--quick"),),
        render=render_shapes,
    ),
    Section(
        "scale", "More than one worker",
        "The same averaged-trace job in one process and on local Ray workers (`bench scale`): times, and the largest "
        "difference of the averages from the one-thread process.",
        full=(json_command("scale", "bench", "scale"),),
        quick=(json_command("scale", "bench", "scale", "--quick", "--n", "2"),),
        render=render_scale,
    ),
    Section(
        "fidelity", "AlphaEdit against the published code",
        "The published AlphaEdit (jianghoucheng/AlphaEdit, patched for CPU and Llama names outside the repository: "
        "docs/FIDELITY.md) and Locus's AlphaEdit on the same model, records, settings and C, one batch and a second on top "
        "(`bench alphaedit_fidelity`; set LOCUS_ALPHAEDIT_PUBLISHED to the patched copy). The full variant takes about two "
        "hours on 2 cores, most of it in the published code.",
        full=(json_command("fidelity", "bench", "alphaedit_fidelity", "--records", "20", "--variants", "all", "--threads", "1"),),
        quick=(json_command("fidelity", "bench", "alphaedit_fidelity", "--records", "2", "--variants", "published",
                            "--threads", "1", "--tokens", "5000"),),
        render=render_fidelity,
    ),
    Section(
        "gpu", "The GPU check",
        "What the GPU path promises, in one table (`bench gpu`, see GPU.md); the quick variant is a dry run of "
        "every stage at tiny sizes on the CPU.",
        full=(json_command("gpu", "bench", "gpu"),),
        quick=(json_command("gpu", "bench", "gpu", "--device", "cpu", "--quick"),),
        render=render_gpu,
    ),
)
SECTION_NAMES = tuple(section.name for section in SECTIONS)


# --- running --------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1", **(extra or {})}


def code_version() -> str | None:
    """The checkout's commit (short), with "+changes" when tracked files differ from it; None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                                 text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def machine() -> dict:
    """Where the commands run: CPU, cores, and (from a process with the commands' environment) versions and torch threads."""
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=child_environment(), capture_output=True, text=True,
                           check=True)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "commit": code_version(),
            **json.loads(probe.stdout.strip().splitlines()[-1])}


def output_tail(text: str) -> str:
    """The last lines of a command's output, progress bars left out."""
    lines = [line.rstrip() for line in re.split(r"[\r\n]", text)]
    lines = [line for line in lines if line.strip() and not re.search(r"\d+%\|", line)]
    return "\n".join(lines[-STDOUT_LINES:])[-STDOUT_CHARACTERS:]


ECHO = threading.Lock()  # commands running side by side (--jobs) echo whole lines, each prefixed with its label


def run_command(command: Command, work: Path, prefix: str = "") -> dict:
    """Run one command (its output echoed as it comes), return what the stored file keeps of it."""
    print(f"{prefix}$ {command.text()}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command.argv(work), cwd=ROOT, env=child_environment(command.environment(work)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    captured = []
    for line in process.stdout:
        captured.append(line)
        with ECHO:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()
    returncode = process.wait()
    result = {"label": command.label, "command": command.text(), "returncode": returncode,
              "seconds": round(time.perf_counter() - started, 1), "stdout": output_tail("".join(captured)), "output": None}
    if command.output and (work / command.output).is_file():
        result["output"] = json.loads((work / command.output).read_text(encoding="utf-8"))
    return result


def run_section(section: Section, variant: str, about_machine: dict, jobs: int = 1, work: str | None = None) -> dict:
    """Run a section's commands (in order, or `jobs` side by side when the section allows it; a failure stops the
    commands not yet started) and return its record, the commands in the section's order."""
    if section.quick == section.full:  # nothing to shorten: the quick run is the full one
        variant = "full"
    record = {"format": FORMAT, "section": section.name, "variant": variant,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": about_machine, "load_before": load_average(), "commands": []}
    started = time.perf_counter()
    commands = section.commands(variant)
    failed = threading.Event()

    def run(command: Command) -> dict | None:
        if failed.is_set():
            return None
        result = run_command(command, Path(folder), f"[{command.label}] " if jobs > 1 else "")
        result["output"] = section.trim(command.label, result["output"])
        if result["returncode"] != 0:
            failed.set()
        return result

    with contextlib.ExitStack() as stack:
        folder = work or stack.enter_context(tempfile.TemporaryDirectory(prefix=f"locus-results-{section.name}-"))
        Path(folder).mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=jobs if section.independent else 1) as pool:
            results = list(pool.map(run, commands))
    record["commands"] = [result for result in results if result is not None]
    record["jobs"] = jobs if section.independent else 1
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["load_after"] = load_average()
    record["ok"] = all(command["returncode"] == 0 for command in record["commands"]) and \
        len(record["commands"]) == len(section.commands(variant))
    return record


def store_path(name: str, store: Path = STORE) -> Path:
    return store / f"{name}.json"


def read_record(name: str, store: Path = STORE) -> dict | None:
    path = store_path(name, store)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_record(record: dict, store: Path = STORE) -> Path:
    store.mkdir(parents=True, exist_ok=True)
    path = store_path(record["section"], store)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def needs_run(record: dict | None, variant: str, rerun: bool) -> bool:
    """Run unless a good stored record is at least as complete as asked for (a full run serves a quick request)."""
    if rerun or record is None or not record.get("ok"):
        return True
    return variant == "full" and record.get("variant") != "full"


# --- rendering ------------------------------------------------------------------------------------------

def commands_block(commands) -> str:
    return "```sh\n" + "\n".join(commands) + "\n```"


def versions_line(record: dict) -> str:
    about = record.get("machine", {})
    threads = about.get("torch_threads", "?")
    load = record.get("load_before")
    return (f"{record['date']}; {about.get('cpu', '?')}, {about.get('cores', '?')} cores, {threads} torch "
            f"thread{'s' if threads != 1 else ''}; Python {about.get('python', '?')}, torch {about.get('torch', '?')}, "
            f"transformers {about.get('transformers', '?')}"
            + (f"; code at commit {about['commit']}" if about.get("commit") else "")
            + f"; {record.get('seconds', 0):,.0f} s wall"
            + (f"; load average {'/'.join(f'{x:.1f}' for x in load)} at the start" if load else ""))


def render_section(section: Section, record: dict | None) -> str:
    lines = [f'<a id="{section.name}"></a>', f"## {section.title} (`{section.name}`)", "", section.about, ""]
    if record is None:
        lines += ["**Not run yet.** `python -m bench results --only " + section.name + "` runs:", "",
                  commands_block(command.text() for command in section.full), "",
                  "Quick variant (`--quick`):", "", commands_block(command.text() for command in section.quick)]
        return "\n".join(lines)
    variant = record.get("variant", "full")
    label = ("**Quick run** (a smaller job than the full commands: fewer cases, records, steps or tokens; it shows the "
             "machinery and the order of magnitude, not the figures of a full run)") if variant == "quick" else "**Full run**"
    lines += [f"{label}: {versions_line(record)}. Commands:", "",
              commands_block(command["command"] for command in record["commands"]), ""]
    if record.get("note"):
        lines += [record["note"], ""]
    failed = [command for command in record["commands"] if command["returncode"] != 0]
    if failed:
        command = failed[0]
        lines += [f"**Failed**: `{command['command']}` exited with status {command['returncode']}; its last lines:", "",
                  "```text", command["stdout"][-2000:], "```", ""]
    try:
        body = section.render(record)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:  # an output in another format
        body = f"(The stored output could not be rendered: {type(error).__name__}: {error}. Rerun the section.)"
    if body:
        lines.append(body)
    if variant == "quick":
        lines += ["", "Full commands:", "", commands_block(command.text() for command in section.full)]
    lines += ["", f"Stored: [results/{section.name}.json](results/{section.name}.json)."]
    return "\n".join(lines)


def render_results(store: Path = STORE) -> str:
    records = {section.name: read_record(section.name, store) for section in SECTIONS}
    contents = []
    for section in SECTIONS:
        record = records[section.name]
        state = "not run yet" if record is None else f"{record.get('variant', 'full')} run, {record.get('date', '?')}"
        contents.append(f"- [{section.title}](#{section.name}) (`{section.name}`): {state}")
    header = [
        "# Measured results",
        "",
        "Generated by `python -m bench results` (bench/results.py) from the files in [results/](results/); do not edit it "
        "by hand. README.md and docs/ link here for their measured figures. Each section shows the exact commands it "
        "ran (`$WORK` is a temporary folder of the run), whether that was the full or the quick variant, and when and "
        "where it ran: date, CPU model, cores, torch threads, Python, torch and transformers versions, the code's commit "
        "(where recorded), wall time.",
        "",
        "Run one section again: `python -m bench results --only NAME --rerun` (add `--quick` for its quick variant); "
        "the other sections keep their stored results. `python -m bench results --list` lists the sections and their "
        "commands. Timings on a shared machine are noisy: compare ratios measured in the same run, not seconds across runs.",
        "",
        *contents,
    ]
    return "\n".join(header) + "\n\n" + "\n\n".join(render_section(section, records[section.name]) for section in SECTIONS) + "\n"


def write_results(store: Path = STORE, path: Path = RESULTS_MD) -> Path:
    path.write_text(render_results(store), encoding="utf-8")
    return path


# --- command line ---------------------------------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench results", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="sections: " + ", ".join(SECTION_NAMES))
    parser.add_argument("--quick", action="store_true", help="the sections' quick variants (minutes each) instead of the full "
                        "commands (up to hours each)")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]", help="only these sections")
    parser.add_argument("--rerun", action="store_true", help="run the chosen sections even where a result is stored "
                        "(default: only those without one, or with a quick one when the full variant is asked for)")
    parser.add_argument("--render", action="store_true", help="run nothing: rewrite docs/RESULTS.md from the stored files")
    parser.add_argument("--list", action="store_true", help="list the sections and their commands, run nothing")
    parser.add_argument("--work", default=None, metavar="DIR", help="keep the commands' outputs in DIR instead of a temporary "
                        "folder (a long run stopped halfway continues there: the sequential runs resume)")
    parser.add_argument("--note", default=None, help="a sentence stored with the result and shown under its commands (e.g. how "
                        "a run resumed from --work was made: over several sessions, on other thread counts)")
    parser.add_argument("--jobs", type=int, default=1, help="run the commands of a section whose commands are independent "
                        "this many at a time (default 1; e.g. 2 on two cores, each command then on one torch thread)")
    arguments = parser.parse_args(argv)
    if arguments.only:
        names = [name.strip() for name in arguments.only.split(",") if name.strip()]
        unknown = [name for name in names if name not in SECTION_NAMES]
        if unknown or not names:
            parser.error(f"unknown section(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTION_NAMES)}")
        arguments.names = names
    else:
        arguments.names = list(SECTION_NAMES)
    return arguments


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    chosen = [section for section in SECTIONS if section.name in arguments.names]
    if arguments.list:
        for section in chosen:
            stored = read_record(section.name)
            print(f"{section.name}: {section.title} [{'not run yet' if stored is None else stored['variant'] + ' run stored'}]")
            for variant in ("full", "quick"):
                for command in section.commands(variant):
                    print(f"  {variant:5}  {command.text()}")
        return 0
    status = 0
    if not arguments.render:
        variant = "quick" if arguments.quick else "full"
        about_machine = None
        for section in chosen:
            if not needs_run(read_record(section.name), variant, arguments.rerun):
                print(f"{section.name}: a result is stored (--rerun runs it again)")
                continue
            about_machine = about_machine or machine()
            print(f"\n=== results {section.name} ({variant}) ===", flush=True)
            record = run_section(section, variant, about_machine, max(1, arguments.jobs), arguments.work)
            if arguments.note:
                record["note"] = arguments.note
            print(f"stored {write_record(record).relative_to(ROOT)} ({record['seconds']:.0f} s"
                  f"{'' if record['ok'] else ', FAILED'})", flush=True)
            status |= 0 if record["ok"] else 1
            write_results()  # after every section, so a long run shows what is done
    print(f"wrote {write_results().relative_to(ROOT)}")
    return status
