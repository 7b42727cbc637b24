"""Fidelity: Locus's AlphaEdit against the published code (github.com/jianghoucheng/AlphaEdit), same everything.

Same model (the embedded SmolLM2-135M-Instruct, float32), same records, the published hyperparameters file,
the same covariance C (Locus's, handed to the published code through its own cache), the same context
prefixes; a batch of --records edits, then another batch on top (the published code's accumulated
K_p K_p^T, `cache_c`), as the published `experiments/evaluate.py` drives it. Reports per layer the relative
weight difference ||W_locus - W_published||_F / ||W_published - W_original||_F after each batch, ES/PS/NS
and retention of both (scored by Locus's evaluator, so differences are the weights'), and the timings.

This module contains none of the published code: it imports it from --published, a copy of the repository
patched for a CPU, transformers 5 and no network (docs/FIDELITY.md lists the patch). The published driver's
`get_project` is read from that copy's experiments/evaluate.py (the module itself imports packages that are
not installed here: datasets, scipy, nltk, hydra).

--variants also runs the published code with Locus's differences put in by the glue, one after another, to
show what each one does: "equal-keys" (keys averaged over the 6 prefixes with equal weights, as Locus does,
instead of 1/2 for the bare prompt and 1/10 for each generated prefix), "equal-keys+kl" (also the essence
term as KL(original || edited), as Locus and SPEC 3 have it, instead of KL(edited || original)) and "matched"
(also the null space taken from C in float64, as Locus does, instead of from C rounded to float32; P is still
stored in float32 as the published driver stores it). What "matched" leaves is float32 against float64 arithmetic.

    python -m bench alphaedit_fidelity --published /work/scratch/alphaedit --records 20 --out fidelity.json
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from core.loading import load_model
from editor.edits.ledger import EditLedger
from editor.edits.weights import projection_weight, restore, snapshot
from editor.evaluation.counterfact import load_records
from editor.evaluation.evaluate import score_records, summarize
from editor.evaluation.health import probe_facts, retention
from editor.methods.prefixes import context_prefixes
from editor.methods.registry import method_for
from editor.statistics.covariance import layer_covariances

ROOT = Path(__file__).resolve().parents[1]
LIFELONG = ROOT / "assets" / "lifelong_counterfact.json"
HPARAMS = "hparams/AlphaEdit/SmolLM2-135M-Instruct.json"  # the published Llama3-8B.json with SmolLM2's layers
VARIANTS = {  # name: (keys weighted as Locus does, KL as Locus has it, null space from the float64 C)
    "published": (False, False, False),
    "equal-keys": (True, False, False),
    "equal-keys+kl": (True, True, False),
    "matched": (True, True, True),
}
SCORES = ("ES", "PS", "NS", "S")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench alphaedit_fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--published", default=os.environ.get("LOCUS_ALPHAEDIT_PUBLISHED"),
                        help="the patched copy of jianghoucheng/AlphaEdit (default: $LOCUS_ALPHAEDIT_PUBLISHED)")
    parser.add_argument("--hparams", default=None, help=f"the published hparams JSON (default: <published>/{HPARAMS})")
    parser.add_argument("--data", default=str(LIFELONG))
    parser.add_argument("--records", type=int, default=20, help="edits per batch (default 20)")
    parser.add_argument("--batches", type=int, default=2, help="batches, each on top of the earlier ones (default 2)")
    parser.add_argument("--tokens", type=int, default=50_000, help="corpus tokens behind Locus's C, used by both (default 50,000)")
    parser.add_argument("--variants", default="published", help=f"{','.join(VARIANTS)} or all (default: published)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log", default=None, help="write the published code's printed output here (default: discard)")
    parser.add_argument("--out", default=None, help="write every figure as JSON")
    return parser.parse_args(argv)


# --- settings -------------------------------------------------------------------------------------


def locus_settings(layout, published: dict, tokens: int):
    """Locus's hyperparameters set to the published file's values wherever Locus has the setting."""
    if published.get("fact_token") != "subject_last":
        raise SystemExit(f"fact_token {published.get('fact_token')!r}: Locus edits at the subject's last token only")
    if published["v_loss_layer"] < layout.num_layers - 1:
        raise SystemExit(f"v_loss_layer {published['v_loss_layer']}: Locus's loss is at the last layer ({layout.num_layers - 1})")
    return method_for(
        layout, "alphaedit", layers=tuple(published["layers"]), nullspace_threshold=published["nullspace_threshold"],
        l2=published["L2"], lr=published["v_lr"], steps=published["v_num_grad_steps"],
        weight_decay=published["v_weight_decay"], clamp_norm=published["clamp_norm_factor"], kl_factor=published["kl_factor"],
        cov_tokens=tokens,
        loss_stop=0.05, kl_prompt="{} is a", prefix_tokens=10,  # constants written into the published code
    )


def settings_rows(hparams, published: dict) -> list[tuple[str, str, str]]:
    """(setting, published, Locus) for the table."""
    return [
        ("layers R", str(published["layers"]), str(list(hparams.layers))),
        ("null-space threshold", f"{published['nullspace_threshold']:g}", f"{hparams.nullspace_threshold:g}"),
        ("L2 (ridge)", f"{published['L2']:g}", f"{hparams.l2:g}"),
        ("target lr / steps", f"{published['v_lr']:g} / {published['v_num_grad_steps']}", f"{hparams.lr:g} / {hparams.steps}"),
        ("loss stop", "0.05 (in code)", f"{hparams.loss_stop:g}"),
        ("weight decay / clamp", f"{published['v_weight_decay']:g} / {published['clamp_norm_factor']:g}",
         f"{hparams.weight_decay:g} / {hparams.clamp_norm:g}"),
        ("KL factor / prompt", f"{published['kl_factor']:g} / '{{}} is a' (in code)", f"{hparams.kl_factor:g} / {hparams.kl_prompt!r}"),
        ("KL direction", "KL(edited || original)", "KL(original || edited)"),
        ("loss layer", f"{published['v_loss_layer']} (last)", "last"),
        ("context prefixes", "Locus's, injected", f"'' + {len(hparams.prefix_starts)} x {hparams.prefix_tokens} tokens"),
        ("key weights", "1/2 bare, 1/10 each prefix", "1/6 each"),
        ("C", f"Locus's, as float32 (not {published['mom2_n_samples']:,} Wikipedia texts)",
         f"E[k k^T], {hparams.cov_tokens:,} tokens, float64"),
        ("solve precision", "float32", "float64"),
    ]


# --- the published code -----------------------------------------------------------------------------


def import_published(path: Path):
    """AlphaEdit_main and the published driver's get_project, imported from `path`."""
    sys.path.insert(0, str(path))
    here = os.getcwd()
    os.chdir(path)  # util/globals.py reads globals.yml from the working directory
    try:
        main = importlib.import_module("AlphaEdit.AlphaEdit_main")
    finally:
        os.chdir(here)
    source = (path / "experiments" / "evaluate.py").read_text(encoding="utf-8")
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "get_project")
    namespace = {"torch": torch, "get_cov": main.get_cov}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path / "experiments" / "evaluate.py"), "exec"), namespace)
    return main, namespace["get_project"]


@contextlib.contextmanager
def kl_original_first(enabled: bool):
    """While enabled, F.kl_div(a, b) computes F.kl_div(b, a): the published KL(edited || original) becomes KL(original || edited)."""
    if not enabled:
        yield
        return
    original = torch.nn.functional.kl_div

    def swapped(input, target, *args, **kwargs):
        return original(target, input, *args, **kwargs)

    torch.nn.functional.kl_div = swapped
    try:
        yield
    finally:
        torch.nn.functional.kl_div = original


def run_published(main, get_project, loaded, chunks, hparams_path: Path, prefixes, covariances, variant: str, log, measure):
    """The published driver's loop (experiments/evaluate.py): P once, then apply_AlphaEdit_to_model per chunk."""
    equal_keys, kl_swapped, float64_null_space = VARIANTS[variant]
    hparams = main.AlphaEditHyperParams.from_json(hparams_path)
    model, tok = loaded.model, loaded.tokenizer
    templates = [prefix + "{}" for prefix in prefixes[1:]]  # Locus's prefixes, as the published templates
    main.CONTEXT_TEMPLATES_CACHE = [["{}"] + templates] if equal_keys else [["{}"], templates]
    name = model.config._name_or_path.replace("/", "_")
    for layer in hparams.layers:  # get_cov's cache: stat.mom2.moment().float(), i.e. E[k k^T] in float32
        covariance = covariances.covariances[layer].cpu()
        main.COV_CACHE[(name, hparams.rewrite_module_tmp.format(layer))] = covariance if float64_null_space else covariance.float()
    m = projection_weight(loaded, hparams.layers[-1]).shape[1]
    clock = time.perf_counter()
    with contextlib.redirect_stdout(log):
        P = torch.stack([get_project(model, tok, layer, hparams) for layer in hparams.layers]).float()  # the driver's P is float32
    project_seconds = time.perf_counter() - clock
    cache_c = torch.zeros((len(hparams.layers), m, m), device="cpu")
    grads = {key: p.requires_grad for key, p in model.named_parameters()}
    saved = snapshot(loaded, list(hparams.layers))
    results = []
    try:
        for chunk in chunks:
            requests = [{"case_id": record.case_id, **record.to_dict()["requested_rewrite"]} for record in chunk]
            clock = Clock()
            with contextlib.redirect_stdout(log), kl_original_first(kl_swapped):
                model, cache_c = main.apply_AlphaEdit_to_model(model, tok, requests, hparams, cache_template=None, cache_c=cache_c, P=P)
            results.append({**clock.read(), **measure(len(results))})
    finally:
        restore(loaded, saved)
        for key, p in model.named_parameters():
            p.requires_grad_(grads[key])
    sizes = [round(float(torch.trace(P[i]))) for i in range(len(hparams.layers))]
    return results, {"project_seconds": project_seconds, "nullspace_size": sizes}


# --- the comparison -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    if not arguments.published:  # `make bench` runs every benchmark without arguments
        print("skipped: give --published PATH, a patched copy of the published AlphaEdit (docs/FIDELITY.md)")
        return 0
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    published_path = Path(arguments.published).resolve()
    hparams_path = Path(arguments.hparams) if arguments.hparams else published_path / HPARAMS
    published = json.loads(hparams_path.read_text(encoding="utf-8"))
    variants = list(VARIANTS) if arguments.variants == "all" else arguments.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)} or all")
        return 2

    main_module, get_project = import_published(published_path)  # first, so a bad copy fails at once
    loaded = load_model("embedded", device=arguments.device)
    method = locus_settings(loaded.layout, published, arguments.tokens)
    hparams = method.settings
    layers = list(hparams.layers)
    records = load_records(arguments.data)[: arguments.records * arguments.batches]
    chunks = [records[i * arguments.records : (i + 1) * arguments.records] for i in range(arguments.batches)]
    print(f"{loaded.name} on {loaded.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"{arguments.batches} batches of {arguments.records} from {Path(arguments.data).name}; published code: {published_path}")
    covariances = layer_covariances(loaded, layers, hparams.cov_tokens, hparams.corpus)
    prefixes = context_prefixes(loaded, hparams)
    probes = probe_facts(loaded, {record.subject for record in records})
    originals = {layer: projection_weight(loaded, layer).detach().clone() for layer in layers}

    def measure(done: int) -> dict:
        """Weights, ES/PS/NS over the edits so far and retention, on the model as it is now."""
        so_far = [record for chunk in chunks[: done + 1] for record in chunk]
        scores = summarize(score_records(loaded, so_far, generation=False)[0], []).to_dict()
        return {
            "weights": {layer: projection_weight(loaded, layer).detach().clone() for layer in layers},
            **{key: scores[key] for key in SCORES}, "retention": retention(loaded, probes)[0],
        }

    unedited = measure(len(chunks) - 1)
    unedited.pop("weights")

    # Locus: each batch computed on top of the ledger's earlier batches (K_p K_p^T from their keys)
    ledger = EditLedger.for_model(loaded)
    locus = []
    for chunk in chunks:
        clock = Clock()
        batch = method.compute(loaded, [record.request() for record in chunk], ledger, covariances)
        times = clock.read()
        ledger.add(batch, loaded)
        with ledger.applied(loaded):
            locus.append({**times, "timings": batch.timings, **measure(len(locus))})
    locus_sizes = [d.nullspace_size for d in batch.layer_diagnostics]

    runs = {}
    with open(arguments.log or os.devnull, "w", encoding="utf-8") as log:
        for variant in variants:
            print(f"running the published code ({variant}) ...", flush=True)
            runs[variant] = run_published(main_module, get_project, loaded, chunks, hparams_path, prefixes, covariances,
                                          variant, log, measure)

    # --- report ---------------------------------------------------------------------------------------
    report = {"model": loaded.name, "device": str(loaded.device), "threads": torch.get_num_threads(),
              "records": arguments.records, "batches": arguments.batches, "data": Path(arguments.data).name,
              "layers": layers, "settings": [list(row) for row in settings_rows(hparams, published)],
              "locus_hparams": hparams.to_dict(), "published_hparams": published, "unedited": unedited,
              "locus": [strip(row) for row in locus], "locus_nullspace_size": locus_sizes, "published": {}}
    print("\nsettings                 published                                 Locus")
    for name, theirs, ours in settings_rows(hparams, published):
        print(f"  {name:22} {theirs:41} {ours}")
    print(f"\nnull-space size per layer {layers}: Locus {locus_sizes}, "
          + ", ".join(f"published ({variant}) {extra['nullspace_size']}" for variant, (_, extra) in runs.items()))
    for variant, (rows, extra) in runs.items():
        differences = []
        for ours, theirs in zip(locus, rows):
            per_layer = {}
            for layer in layers:
                update = (theirs["weights"][layer].double() - originals[layer].double()).norm()
                per_layer[layer] = {
                    "relative_difference": float((ours["weights"][layer].double() - theirs["weights"][layer].double()).norm() / update),
                    "update_norm_ratio": float((ours["weights"][layer].double() - originals[layer].double()).norm() / update),
                }
            differences.append(per_layer)
        report["published"][variant] = {"batches": [strip(row) for row in rows], **extra, "differences": differences}
        print(f"\n[{variant}] ||W_locus - W_published||_F / ||W_published - W_original||_F per layer "
              f"(||W_locus - W_0|| / ||W_published - W_0|| in brackets)")
        for index, per_layer in enumerate(differences):
            cells = "  ".join(f"L{layer} {v['relative_difference']:.2e} [{v['update_norm_ratio']:.3f}]" for layer, v in per_layer.items())
            print(f"  after batch {index + 1}: {cells}")
    print(f"\n{'':32}{'edits':>6}{'ES':>7}{'PS':>7}{'NS':>7}{'S':>7}{'retain':>8}{'wall s':>9}{'CPU s':>9}{'load':>6}")
    print(f"{'unedited':32}{len(records):>6}{row_cells(unedited)}")
    for index in range(len(chunks)):
        edits = (index + 1) * arguments.records
        print(f"{f'Locus, batch {index + 1}':32}{edits:>6}{row_cells(locus[index])}{time_cells(locus[index])}")
        for variant, (rows, _) in runs.items():
            print(f"{f'published ({variant}), batch {index + 1}':32}{edits:>6}{row_cells(rows[index])}{time_cells(rows[index])}")
    for variant, (_, extra) in runs.items():
        print(f"published ({variant}): null-space projections P took {extra['project_seconds']:.1f} s (not in the batch times)")
    print("ES/PS/NS over the edits so far, scored by Locus's evaluator for both; retention of "
          f"{len(probes)} known facts; C shared ({hparams.cov_tokens:,} tokens, cached, not timed); "
          "load: the 1-minute load average at the batch's end")
    if arguments.out:
        Path(arguments.out).write_text(json.dumps(report, indent=1))
    return 0


class Clock:
    """Wall and CPU seconds since it was made, and the load average then (a shared machine's timings need all three)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict:
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": time.process_time() - self.cpu,
                "load": os.getloadavg()[0]}


def strip(row: dict) -> dict:
    return {key: value for key, value in row.items() if key != "weights"}


def time_cells(row: dict) -> str:
    return f"{row['seconds']:9.1f}{row['cpu_seconds']:9.1f}{row['load']:6.1f}"


def row_cells(row: dict) -> str:
    return "".join(f"{row[key]:7.1f}" for key in SCORES) + f"{row['retention']:8.1f}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
