"""The docs and the machinery behind their figures, checked without running a model.

`python -m bench results` (bench/results.py): every section has commands and a quick variant, a stored result
renders, docs/RESULTS.md is what the stored files render to. README.md stays a front door (at most 200 lines),
every relative link in README.md and docs/*.md resolves, and every "SPEC N" cited in the code is a section
(and "SPEC N step K" a step) of docs/SPEC.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bench import results
from bench.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BENCHMARKS = {path.stem.removeprefix("bench_") for path in (ROOT / "bench").glob("bench_*.py")}


# --- bench results ------------------------------------------------------------------------------------

def test_every_section_has_commands_and_a_quick_variant():
    names = [section.name for section in results.SECTIONS]
    assert len(names) == len(set(names))
    for section in results.SECTIONS:
        assert section.title and section.about, section.name
        assert section.full and section.quick, f"{section.name}: a full and a quick variant"
        for variant in (section.full, section.quick):
            labels = [command.label for command in variant]
            assert len(labels) == len(set(labels)), f"{section.name}: labels name one command each"
            for command in variant:
                package, name = command.args[0], command.args[1]
                assert package in ("bench", "editor", "tracer"), command.text()
                if package == "bench":
                    assert name in BENCHMARKS, f"{command.text()}: no bench/bench_{name}.py"
                assert command.text().startswith(("python -m", "LOCUS_CACHE=")), command.text()
        # the quick variant stores the same outputs, so one renderer serves both
        assert [command.label for command in section.full] == [command.label for command in section.quick], section.name


def test_results_is_a_command_but_not_a_benchmark():
    assert "results" in COMMANDS and "results" not in BENCHMARKS  # `python -m bench` (make bench) never runs it
    arguments = results.parse(["--quick", "--only", "trace,edit", "--rerun"])
    assert arguments.quick and arguments.rerun and arguments.names == ["trace", "edit"] and arguments.note is None
    assert results.parse(["--only", "editors", "--note", "Resumed."]).note == "Resumed."
    with pytest.raises(SystemExit):
        results.parse(["--only", "nonsense"])


def test_what_runs_again():
    stored_quick = {"variant": "quick", "ok": True}
    stored_full = {"variant": "full", "ok": True}
    assert results.needs_run(None, "quick", rerun=False)
    assert not results.needs_run(stored_quick, "quick", rerun=False)
    assert results.needs_run(stored_quick, "full", rerun=False)  # a quick result does not stand in for a full one
    assert not results.needs_run(stored_full, "quick", rerun=False)
    assert results.needs_run(stored_full, "full", rerun=True)
    assert results.needs_run({"variant": "full", "ok": False}, "full", rerun=False)


def test_command_text_is_what_a_reader_types(tmp_path):
    command = results.Command("cache", ("tracer", "cache-model"), env=(("LOCUS_CACHE", f"{results.WORK}/cache"),))
    assert command.text() == "LOCUS_CACHE=$WORK/cache python -m tracer cache-model"
    assert command.environment(tmp_path) == {"LOCUS_CACHE": f"{tmp_path}/cache"}
    trace = results.json_command("eiffel", "tracer", "trace", "--prompt", "The Eiffel Tower is in")
    assert trace.text() == "python -m tracer trace --prompt 'The Eiffel Tower is in' --out $WORK/eiffel.json"
    assert trace.argv(tmp_path)[-1] == f"{tmp_path}/eiffel.json" and trace.output == "eiffel.json"


def fake_trace_record() -> dict:
    case = {"name": "short", "prompt": "Michael Jordan plays the sport of", "tokens": 6, "cells": 540, "fast_seconds": 20.0,
            "reference_seconds": 120.0, "reference_cells_timed": 54, "max_abs_difference": 6e-7, "ratio": 6.0,
            "extrapolated": True}
    output = {"model": "m", "device": "cpu", "threads": 1, "samples": 10, "window": 10, "kinds": ["hidden", "mlp", "attn"],
              "quick": True, "preview": {"first_seconds": 0.5, "median_seconds": 0.4}, "cases": [case],
              "load_start": "1.0 1.0 1.0", "load_end": "1.0 1.0 1.0"}
    return {"format": 1, "section": "trace", "variant": "quick", "date": "2025-01-01 00:00 UTC", "ok": True, "seconds": 61.0,
            "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 1, "python": "3.x", "torch": "t", "transformers": "tf"},
            "load_before": [1.0, 1.0, 1.0],
            "commands": [{"label": "trace", "command": "python -m bench trace --quick --out $WORK/trace.json", "returncode": 0,
                          "seconds": 60.0, "stdout": "", "output": output}]}


def test_a_stored_result_renders_and_a_missing_one_says_how_to_make_it(tmp_path):
    results.write_record(fake_trace_record(), tmp_path)
    text = results.render_results(tmp_path)
    trace = text.split('<a id="trace"></a>')[1].split("<a id=")[0]
    assert "**Quick run**" in trace and "Test CPU, 2 cores, 1 torch thread; Python 3.x, torch t, transformers tf" in trace
    assert "python -m bench trace --quick --out $WORK/trace.json" in trace
    assert "| \"Michael Jordan plays the sport of\" | 6 | 540 | ~120.0 s (54 of 540 cells timed, extrapolated) | 20.0 s | 6.0x" in trace
    assert "could not be rendered" not in trace
    edit = text.split('<a id="edit"></a>')[1].split("<a id=")[0]
    assert "**Not run yet.**" in edit and "python -m bench edit --out $WORK/edit.json" in edit


def test_every_stored_result_renders():
    for path in sorted(results.STORE.glob("*.json")):
        record = json.loads(path.read_text())
        assert record["section"] in results.SECTION_NAMES, path.name
        section = next(section for section in results.SECTIONS if section.name == record["section"])
        assert record["variant"] in ("quick", "full") and record["machine"]["cpu"] and record["commands"], path.name
        assert "could not be rendered" not in results.render_section(section, record), path.name


def test_results_md_is_rendered_from_the_stored_files():
    assert (ROOT / "docs" / "RESULTS.md").read_text(encoding="utf-8") == results.render_results(), (
        "docs/RESULTS.md differs from the stored results: python -m bench results --render")


# --- README and docs ------------------------------------------------------------------------------------

def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; reference material belongs in docs/"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.mark.parametrize("path", [ROOT / "README.md", *DOCS], ids=lambda path: path.name)
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # links inside code are code
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.name}: links to missing files {broken}"


SKIPPED = {".venv", ".git", "__pycache__", "node_modules", ".pytest_cache", ".ruff_cache"}
CITATION = re.compile(r"\bSPEC(?: sections?)? (\d+(?:(?:, | and )\d+)*)(?: step (\d+))?")


def spec_sections() -> dict[int, str]:
    """docs/SPEC.md's numbered sections: {number: the section's text}."""
    text = (ROOT / "docs" / "SPEC.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (\d+)\. ", text, flags=re.M)
    return {int(number): body for number, body in zip(parts[1::2], parts[2::2])}


def python_files() -> list[Path]:
    """Every *.py file of the repository (not the virtual environment's)."""
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED]
        files += [Path(folder) / name for name in names if name.endswith(".py")]
    return files


def test_spec_citations_name_sections_that_exist():
    sections = spec_sections()
    assert set(sections) == {1, 2, 3, 4, 5, 6}
    cited, missing = 0, []
    for path in python_files():
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            numbers = [int(number) for number in re.findall(r"\d+", match.group(1))]
            step = match.group(2)
            for number in numbers:
                cited += 1
                if number not in sections:
                    missing.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
                elif step and not re.search(rf"^{step}\. ", sections[number], flags=re.M):
                    missing.append(f"{path.relative_to(ROOT)}: {match.group(0)} (no step {step})")
    assert cited >= 30, f"only {cited} SPEC citations found: has the citation style changed?"
    assert not missing, "SPEC citations of sections or steps docs/SPEC.md does not have:\n" + "\n".join(missing)


def test_design_notes_point_to_the_repository_spec():
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert "shared/SPEC.md" not in design and "(SPEC.md)" in design.splitlines()[2]
