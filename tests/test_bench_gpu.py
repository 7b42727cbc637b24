"""The GPU check runs on a bare GPU image: its import path has no gradio or plotly (nor ray), and the bundle that
carries the embedded model there in parts under 64 MiB joins back to the same bytes, checksummed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_bundle import join_parts, read_sums, sha256, split_file

ROOT = Path(__file__).resolve().parents[1]
NOT_ON_A_BARE_GPU_IMAGE = ("gradio", "plotly", "ray")


def test_the_gpu_check_imports_no_gradio_or_plotly():
    code = (
        "import sys\n"
        "import bench.bench_gpu, bench.bench_shapes, bench.gpu_bundle\n"
        f"found = [name for name in {NOT_ON_A_BARE_GPU_IMAGE!r} if name in sys.modules]\n"
        "print(found)\n"
        "sys.exit(1 if found else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bundle_parts_join_to_the_same_bytes(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(bytes(range(256)) * 41 + b"tail")  # 10,500 bytes
    folder = tmp_path / "bundle"
    folder.mkdir()
    parts = split_file(source, folder, part_bytes=4096)
    assert [part.name for part in parts] == ["model.gguf.part1", "model.gguf.part2", "model.gguf.part3"]
    assert max(part.stat().st_size for part in parts) <= 4096
    (folder / "SHA256SUMS").write_text(f"{sha256(source)}  model.gguf\n")
    joined = join_parts(folder, "model.gguf", tmp_path / "joined.gguf")
    assert joined.read_bytes() == source.read_bytes() and read_sums(folder)["model.gguf"] == sha256(joined)
    (folder / "model.gguf.part2").unlink()
    with pytest.raises(SystemExit, match="parts of model.gguf"):
        join_parts(folder, "model.gguf", tmp_path / "again.gguf")


def test_the_gpu_checks_shape_stage_runs_tiny_on_the_cpu(capsys):
    """`python -m bench gpu --device cpu --quick --stages shape`: the llama-3-8b family at a tiny size, every step."""
    from bench import bench_gpu

    assert bench_gpu.main(["--device", "cpu", "--quick", "--stages", "shape", "--edits", "1"]) == 0
    table = capsys.readouterr().out
    assert "llama-3-8b shape (random weights), float32: trace" in table and "180 cells" in table
    assert "1 edits" in table and "covariance over 1,000 tokens" in table
