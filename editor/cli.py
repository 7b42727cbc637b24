"""Command line: `python -m editor {stats,evaluate,sweep,layers,edit,devset,lifelong-set,sequential,sequential-plot} ...`."""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

from core.cli import (
    add_model_arguments,
    add_worker_arguments,
    check_worker_arguments,
    load_from_arguments,
    parse_numbers,
    run_parsed,
    worker_pool,
    write_json,
    write_text,
)
from core.errors import InputError
from editor.methods.registry import METHOD_NAMES, method_class, method_classes
from editor.methods.settings import EditSettings

# Every command imports the editor's modules inside its handler: they pull in torch and transformers
# (~3 s), which `python -m editor --help` must not pay.


SETTING_FLAGS = {"mom2_weight": "--lambda", "cov_tokens": "--tokens", "corpus": "--corpus", "l2": "--l2",
                 "nullspace_threshold": "--nullspace-threshold", "norm_lambda": "--norm-lambda", "early_stop_steps": "--early-stop",
                 "step_size": "--step-size"}


def _method(arguments: argparse.Namespace, loaded, layers: tuple[int, ...] | None):
    """The chosen method with the family's defaults, the flags' settings and every --set NAME=VALUE, checked."""
    cls = method_class(arguments.method)
    given = {"mom2_weight": getattr(arguments, "mom2_weight", None), "cov_tokens": getattr(arguments, "tokens", None),
             "corpus": getattr(arguments, "corpus", None), "l2": getattr(arguments, "l2", None),
             "nullspace_threshold": getattr(arguments, "nullspace_threshold", None),
             "norm_lambda": getattr(arguments, "norm_lambda", None), "early_stop_steps": getattr(arguments, "early_stop", None),
             "step_size": getattr(arguments, "step_size", None)}
    for name, value in given.items():
        if value is not None and name not in cls.Settings.field_names():
            raise InputError(f"{SETTING_FLAGS[name]} is not a setting of {cls.label}; see `python -m editor methods`.")
    for pair in getattr(arguments, "set", None) or []:
        name, equals, text = pair.partition("=")
        if not equals:
            raise InputError(f"--set takes NAME=VALUE, got {pair!r}.")
        given[name.strip()] = cls.Settings.parse_value(name.strip(), text.strip())
    return cls.for_model(loaded.layout, layers=layers, **given)


def _layers(arguments: argparse.Namespace, loaded) -> tuple[int, ...] | None:
    from core.progress import tqdm_progress  # lazy: torch and transformers (~3 s); --help must stay instant
    from editor.layers import auto_layers, parse_layers

    text = getattr(arguments, "layers", None)
    if not text:
        return None
    if text.strip().lower() == "auto":
        report, close = tqdm_progress("choosing R (averaged traces)")
        try:
            chosen = auto_layers(loaded, progress=report)
        finally:
            close()
        print(f"--layers auto: {chosen.explanation}")
        for warning in chosen.warnings:
            print(f"warning: {warning}")
        return chosen.layers
    return parse_layers(text, loaded.layout.num_layers)


def command_stats(arguments: argparse.Namespace) -> int:
    if arguments.tokens is not None and arguments.tokens < 1:  # checks that need no torch come before its import
        raise InputError("--tokens must be positive.")
    thresholds = parse_thresholds(arguments.nullspace) if arguments.nullspace else []
    from core.progress import tqdm_progress  # lazy: torch and transformers (~3 s); --help must stay instant
    from editor.layers import parse_layers
    from editor.statistics.covariance import layer_covariances

    layers = parse_layers(arguments.layers)  # fail before the model load
    check_worker_arguments(arguments)
    loaded = load_from_arguments(arguments)
    parse_layers(arguments.layers, loaded.layout.num_layers)
    tokens = arguments.tokens or EditSettings().cov_tokens
    started = time.perf_counter()
    with worker_pool(arguments) as pool:
        report, close = tqdm_progress("covariance")
        try:
            result = layer_covariances(loaded, list(layers), tokens, arguments.corpus, progress=report,
                                       use_cache=not arguments.no_cache, pool=pool)
        finally:
            close()
    print(f"{loaded.name}: C = E[k k^T] of the MLP output projection's inputs, corpus {result.corpus['name']} "
          f"({result.corpus['texts']:,} texts, sha256 {result.corpus['sha256']})")
    print(f"{'layer':>5} {'tokens':>10} {'largest eig':>12} {'smallest eig':>13} {'condition':>10} {'trace':>9}")
    for layer in layers:
        d = result.diagnostics[layer]
        print(f"{layer:>5} {d.tokens:>10,} {d.largest_eigenvalue:>12.4g} {d.smallest_eigenvalue:>13.4g} "
              f"{d.condition_number:>10.3g} {d.trace:>9.4g}")
    if thresholds:
        print_null_spaces(result.covariances, layers, thresholds)
    computed = ", ".join(map(str, result.computed_layers)) or "none (all cached)"
    print(f"computed now: {computed}; {time.perf_counter() - started:.1f} s")
    for warning in result.warnings():
        print(f"warning: {warning}")
    return 0


MAX_THRESHOLDS = 8


def parse_thresholds(text: str) -> list[float]:
    """'0.005,0.01' -> [0.005, 0.01]: 1 to MAX_THRESHOLDS positive, finite numbers (sorted, as parse_numbers gives them)."""
    values = parse_numbers(text, float, "--nullspace")
    if len(values) > MAX_THRESHOLDS:
        raise InputError(f"--nullspace takes 1 to {MAX_THRESHOLDS} thresholds, e.g. 0.005,0.01,0.02; got {text!r}.")
    return values


def print_null_spaces(covariances: dict, layers, thresholds: list[float]) -> None:
    """Per layer and threshold: AlphaEdit's null space (eigenvalues of C below it) and its share of the text keys' energy."""
    from editor.methods.updates import null_space_profile  # lazy: torch (~2 s); --help must stay instant

    print("AlphaEdit's null space at each threshold: the directions of C with a smaller eigenvalue, and the share of "
          "ordinary text's key energy (trace C) that lies in them (0% for a true null space, which no update can disturb)")
    print(f"{'layer':>5} " + " ".join(f"{f'< {threshold:g}':>18}" for threshold in thresholds))
    for layer in layers:
        covariance = covariances[layer]
        cells = [f"{size:>6}/{covariance.shape[0]} {share:>6.1%}" for size, share in null_space_profile(covariance, thresholds)]
        print(f"{layer:>5} " + " ".join(f"{cell:>18}" for cell in cells))


def print_distinct_warnings(labelled) -> None:
    """Print `warning (label): text` for (label, warnings) pairs; one that differs only in its numbers is shown once."""
    shown: set[str] = set()
    for label, warnings in labelled:
        for warning in warnings:
            kind = re.sub(r"[-+.,\d]+", "#", warning)
            if kind not in shown:
                shown.add(kind)
                print(f"warning ({label}): {warning}")


def command_evaluate(arguments: argparse.Namespace) -> int:
    from core.progress import tqdm_progress  # lazy: torch and transformers (~3 s); --help must stay instant
    from editor.evaluation.counterfact import load_records
    from editor.evaluation.evaluate import evaluate_records

    records = load_records(arguments.data)  # malformed records are reported before the model loads
    if arguments.limit is not None and arguments.limit < 1:
        raise InputError("--limit must be at least 1.")
    check_worker_arguments(arguments)
    if (arguments.workers is not None or arguments.ray is not None) and arguments.mode != "single":
        raise InputError("--workers/--ray evaluate records one at a time: add --mode single (batch mode makes one edit).")
    loaded = load_from_arguments(arguments)
    layers = _layers(arguments, loaded)
    method = _method(arguments, loaded, layers)
    with worker_pool(arguments) as pool:
        report, close = tqdm_progress(f"evaluate ({arguments.mode})")
        try:
            result = evaluate_records(
                loaded, records, method, mode=arguments.mode, limit=arguments.limit,
                generation=not arguments.no_generation, progress=report, pool=pool, use_cache=not arguments.no_cache,
                by_generation=not arguments.no_generation_success,
            )
        finally:
            close()
    print(result.table())
    for warning in result.warnings:
        print(f"warning: {warning}")
    if arguments.out:
        write_json(arguments.out, result.to_dict())
    return 0


def command_edit(arguments: argparse.Namespace) -> int:
    # lazy: torch and transformers (~3 s); --help must stay instant
    from core.predict import predict_next_tokens
    from core.progress import tqdm_progress
    from editor.edits.ledger import EditLedger
    from editor.edits.requests import EditRequest, validate_requests

    request = EditRequest(arguments.subject, arguments.prompt, arguments.target_new, arguments.target_true)
    validate_requests([request])  # before the model load
    loaded = load_from_arguments(arguments)
    ledger = EditLedger.load(arguments.ledger, loaded) if arguments.ledger else EditLedger.for_model(loaded)
    method = _method(arguments, loaded, _layers(arguments, loaded))
    report, close = tqdm_progress(f"{method.name} edit")
    try:
        batch = method.compute(loaded, [request], ledger, progress=report)
    finally:
        close()
    edited = ledger.with_batch(batch)
    prompts = [batch.requests[0].text] + list(arguments.check or [])

    def show(label: str) -> None:
        for prompt in prompts:
            top = predict_next_tokens(loaded, prompt, 3)
            print(f"  {label:8} {prompt!r}: " + ", ".join(f"{t.token!r} {t.probability:.1%}" for t in top))

    with ledger.applied(loaded):
        show("before")
    with edited.applied(loaded):
        show("after")
    for diag in batch.request_diagnostics:
        print(f"  target: p(new) {diag.final_probability:.3f} after {diag.steps} steps, loss {diag.losses[-1]:.3f}")
    for warning in batch.warnings:
        print(f"warning: {warning}")
    if arguments.save:
        print(f"saved {len(edited)} batch(es) to {edited.save(arguments.save)}")
    return 0


def command_sweep(arguments: argparse.Namespace) -> int:
    from core.progress import tqdm_progress  # lazy: torch and transformers (~3 s); --help must stay instant
    from editor.evaluation.counterfact import load_records
    from editor.studies.sweep import sweep_records

    records = load_records(arguments.data)  # malformed records are reported before the model loads
    budgets = parse_numbers(arguments.budgets, int, "--tokens")
    if arguments.limit is not None and arguments.limit < 1:
        raise InputError("--limit must be at least 1.")
    records = records[: arguments.limit] if arguments.limit else records
    check_worker_arguments(arguments)
    loaded = load_from_arguments(arguments)
    method = _method(arguments, loaded, _layers(arguments, loaded))
    lambdas = parse_numbers(arguments.lambdas, float, "--lambda") if arguments.lambdas else []
    with worker_pool(arguments) as pool:
        report, close = tqdm_progress("sweep")
        try:
            result = sweep_records(loaded, records, method, budgets, lambdas, generation=arguments.generation, progress=report,
                                   pool=pool, use_cache=not arguments.no_cache, by_generation=not arguments.no_generation_success)
        finally:
            close()
    print(result.table())
    print_distinct_warnings((f"{row.cov_tokens:,} tokens" + ("" if row.mom2_weight is None else f", lambda {row.mom2_weight:g}"),
                             row.warnings) for row in result.rows)
    if arguments.out:
        write_json(arguments.out, result.to_dict())
    return 0


def command_layers(arguments: argparse.Namespace) -> int:
    # lazy: torch and transformers (~3 s); --help must stay instant
    from core.progress import tqdm_progress
    from editor.evaluation.counterfact import load_records
    from editor.layers import layer_spans, layers_text
    from editor.studies.windows import measure_windows, parse_windows, windows_cache_path

    records = load_records(arguments.data)  # malformed records are reported before the model loads
    if arguments.limit is not None and arguments.limit < 1:
        raise InputError("--limit must be at least 1.")
    if arguments.width < 1:
        raise InputError(f"--width must be at least 1, got {arguments.width}.")
    if arguments.trace_facts < 1:
        raise InputError(f"--trace-facts must be at least 1, got {arguments.trace_facts}.")
    if arguments.windows.strip().lower() != "all":
        layer_spans(arguments.windows)  # a typo fails before the model load
    records = records[: arguments.limit] if arguments.limit else records
    loaded = load_from_arguments(arguments)
    windows = parse_windows(arguments.windows, loaded.layout.num_layers, arguments.width)
    method = _method(arguments, loaded, windows[0])
    print(f"{len(records)} records x {len(windows)} windows ({', '.join(layers_text(w) for w in windows[:6])}"
          f"{', ...' if len(windows) > 6 else ''}); cache: {windows_cache_path(loaded, records, method)} (a restart continues)")
    report, close = tqdm_progress("R by editing")
    try:
        result = measure_windows(loaded, records, windows, method, width=arguments.width, trace_facts=arguments.trace_facts,
                                 use_cache=not arguments.no_cache, progress=report,
                                 by_generation=not arguments.no_generation_success)
    finally:
        close()
    print(result.table())
    print_distinct_warnings((f"R = {layers_text(window.layers)}", window.warnings) for window in result.windows)
    print(f"{result.seconds:.0f} s ({result.cached_windows} window(s) from the cache; targets {result.target_seconds:.0f} s)")
    if arguments.out:
        write_json(arguments.out, result.to_dict())
    return 0


def command_devset(arguments: argparse.Namespace) -> int:
    from editor.studies.devset import (
        build_devset,  # lazy: torch and transformers (~3 s); --help must stay instant
    )

    loaded = load_from_arguments(arguments)
    path, records = build_devset(loaded, arguments.out, max_records=arguments.max_records)
    print(f"wrote {len(records)} records to {path}")
    return 0


def command_lifelong_set(arguments: argparse.Namespace) -> int:
    from editor.studies.lifelong import (
        build_lifelong_set,  # lazy: torch and transformers (~3 s); --help must stay instant
    )

    if not 1 <= arguments.max_records <= 20_000:
        raise InputError("--max-records must be between 1 and 20,000.")
    path, records = build_lifelong_set(arguments.out, max_records=arguments.max_records)
    print(f"wrote {len(records)} records to {path}")
    return 0


def command_sequential(arguments: argparse.Namespace) -> int:
    from core.progress import tqdm_progress  # lazy: torch and transformers (~3 s); --help must stay instant
    from editor.edits.ledger import EditLedger
    from editor.evaluation.counterfact import load_records
    from editor.studies.figures import sequential_html
    from editor.studies.sequential import SequentialRun, record_chunks, resume_mismatch, run_sequential

    records = load_records(arguments.data)  # malformed records are reported before the model loads
    record_chunks(records, arguments.batch_size, arguments.batches)
    if arguments.resume and not (arguments.out and arguments.ledger_out):
        raise InputError("--resume needs --out and --ledger-out (the run's JSON and its ledger).")
    if not arguments.collapse_ratio > 1:
        raise InputError("--collapse-ratio must be above 1.")
    compare = [_run_file(path) for path in arguments.compare or []]
    loaded = load_from_arguments(arguments)
    method = _method(arguments, loaded, _layers(arguments, loaded))
    settings = {"data": Path(arguments.data).name, "records": len(records), "batch_size": arguments.batch_size,
                "batches": arguments.batches, "method": method.name, "layers": list(method.layers),
                "model": loaded.name, "collapse_ratio": arguments.collapse_ratio, "hparams": method.to_dict(),
                "label": arguments.label or method.name, "generation_success": not arguments.no_generation_success}
    run, ledger = None, None
    if arguments.resume and Path(arguments.out).is_file() and Path(arguments.ledger_out).is_file():
        run = SequentialRun.from_dict(_run_file(arguments.out))
        ledger = EditLedger.load(arguments.ledger_out, loaded)
        mismatch = resume_mismatch(run.settings, settings, method.unused_settings, method.Settings().to_dict(complete=True))
        if mismatch:
            raise InputError(f"--resume: {arguments.out} was a run with other settings ({', '.join(mismatch)}).")
        run.batches = run.batches[: len(ledger)]  # a batch whose ledger was not written is done again
        print(f"resuming after batch {len(ledger)}")
    elif arguments.unedited_from:
        run = _unedited_run(arguments.unedited_from, settings)

    def save(current, kept) -> None:
        if arguments.ledger_out:
            kept.save(arguments.ledger_out)
        if arguments.out:
            write_json(arguments.out, current.to_dict())
        row = current.batches[-1]
        by_generation = "" if row.get("ES_gen") is None else \
            f" (by generation: ES {row['ES_gen']:.1f} PS {_figure(row.get('PS_gen'))} NS {_figure(row.get('NS_gen'))})"
        print(f"batch {row['batch']}: {row['edits']} edits, ES {_figure(row['ES'])} PS {_figure(row['PS'])} NS {_figure(row['NS'])}"
              f"{by_generation}, perplexity x{row['perplexity_ratio']:.3f}, retention {row['retention']:.0f}%, {row['seconds']:.0f} s",
              flush=True)

    report, close = tqdm_progress(f"sequential {method.name}")
    try:
        run, ledger = run_sequential(loaded, records, method, arguments.batch_size, arguments.batches, run=run, ledger=ledger,
                                     collapse_ratio=arguments.collapse_ratio, settings=settings, on_batch=save, progress=report,
                                     by_generation=not arguments.no_generation_success)
    finally:
        close()
    print(run.table())
    if arguments.out:
        write_json(arguments.out, run.to_dict())
    if arguments.html:
        print(f"wrote {write_text(arguments.html, sequential_html([run.to_dict()] + compare))}")
    if run.stopped:
        print(f"The run stopped early. The last healthy ledger ({len(ledger)} batch(es))"
              + (f" is in {arguments.ledger_out}." if arguments.ledger_out else " was not saved (use --ledger-out)."))
    return 0


def _figure(value: float | None) -> str:
    """A percentage to one decimal, or a dash where there is none."""
    return "-" if value is None else f"{value:.1f}"


def command_damage(arguments: argparse.Namespace) -> int:
    from core.progress import tqdm_progress  # lazy: torch and transformers (~3 s); --help must stay instant
    from editor.edits.ledger import EditLedger
    from editor.evaluation.counterfact import load_records
    from editor.evaluation.damage import check_control, damage_report
    from editor.evaluation.health import probe_facts

    scales = parse_numbers(arguments.scales, float, "--scales") if arguments.scales else []
    check_control(scales, arguments.seeds)
    if not Path(arguments.ledger).is_file():
        raise InputError(f"The ledger file {arguments.ledger!r} does not exist.")
    if arguments.batches is not None and arguments.batches < 1:
        raise InputError("--batches must be at least 1.")
    records = load_records(arguments.data)[: arguments.limit] if arguments.data else []
    loaded = load_from_arguments(arguments)
    ledger = EditLedger.load(arguments.ledger, loaded)
    if arguments.batches is not None:
        if arguments.batches > len(ledger):
            raise InputError(f"The ledger holds {len(ledger)} batches, fewer than --batches {arguments.batches}.")
        ledger.batches = ledger.batches[: arguments.batches]
    subjects = {request.subject for request in ledger.requests} | {record.subject for record in records}
    probes = probe_facts(loaded, subjects)
    report, close = tqdm_progress("damage")
    try:
        result = damage_report(loaded, ledger, probes, scales, arguments.seeds if scales else 0, progress=report)
    finally:
        close()
    print(result.text())
    if arguments.out:
        write_json(arguments.out, result.to_dict())
    return 0


def _unedited_run(path: str, settings: dict):
    """A new run that starts from the unedited figures of the earlier run in `path` (same data, batches and model)."""
    import torch  # lazy: torch and transformers (~3 s); --help must stay instant

    from editor.studies.sequential import SequentialRun, differing_keys  # lazy: it imports torch

    earlier = _run_file(path)
    mismatch = differing_keys(earlier.get("settings", {}), settings, ("data", "records", "batch_size", "batches", "model"))
    if mismatch or not earlier.get("unedited_records"):
        raise InputError(f"--unedited-from: {Path(path).name} was a run on other records or another model ({', '.join(mismatch) or 'no records'}).")
    print(f"the unedited figures come from {Path(path).name}")
    return SequentialRun(settings={**settings, "torch_threads": torch.get_num_threads(), "unedited_from": Path(path).name},
                         unedited=earlier["unedited"], unedited_records=earlier["unedited_records"])


def _run_file(path: str) -> dict:
    """The JSON of `python -m editor sequential --out` in `path`, or an InputError saying what is wrong with it."""
    if not Path(path).is_file():
        raise InputError(f"The run file {path!r} does not exist.")
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{Path(path).name} is not valid JSON: {error.msg}.") from None
    if not isinstance(data, dict) or "unedited" not in data or "batches" not in data:
        raise InputError(f"{Path(path).name} is not the JSON of `python -m editor sequential --out`.")
    return data


def command_methods(arguments: argparse.Namespace) -> int:
    """List the editing methods and their own settings with defaults."""
    for cls in method_classes():
        print(f"{cls.name}: {cls.label}")
        defaults = cls.Settings()
        for name in cls.Settings.own_field_names():
            families = ", ".join(f"{family} {values[name]:g}" for family, values in cls.Settings.FAMILY_DEFAULTS.items()
                                 if name in values)
            print(f"    {name} = {getattr(defaults, name)!r}" + (f" (by model family: {families})" if families else "")
                  + (f"  {SETTING_FLAGS[name]}" if name in SETTING_FLAGS else ""))
    shared = ", ".join(EditSettings.field_names())
    print(f"settings every method shares (--set NAME=VALUE): {shared}")
    return 0


def command_sequential_plot(arguments: argparse.Namespace) -> int:
    from editor.studies.figures import sequential_html  # lazy: plotly (~1 s); --help must stay instant

    runs = [_run_file(path) for path in arguments.runs]
    print(f"wrote {write_text(arguments.html, sequential_html(runs))}")
    return 0


RECORDS_HELP = "CounterFact-format JSON (a list, or {records: [...]})"
LAYERS_HELP = "e.g. 2-6, or auto (the tracer's recommendation); default: the family's"


def add_covariance_arguments(parser: argparse.ArgumentParser, lambda_help: str = "lambda (covariance weight; default: the family's)") -> None:
    """--lambda, --tokens and --corpus: how C is built and weighted."""
    parser.add_argument("--lambda", dest="mom2_weight", type=float, default=None, help=lambda_help)
    parser.add_argument("--tokens", type=int, default=None, help="covariance token budget")
    parser.add_argument("--corpus", default=None, help="covariance corpus: 'wikipedia' or a file")


def number_at_least(low: float, kind=float, strict: bool = False):
    """An argparse type: a finite `kind` >= low (> low when strict), refused at parse time with a plain message."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'above' if strict else 'at least'} {low:g}")
        return value
    return parse


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """AlphaEdit's, ENCORE's and UltraEdit's own settings (--nullspace-threshold, --l2, --early-stop, --norm-lambda, --step-size)."""
    parser.add_argument("--nullspace-threshold", type=number_at_least(0, strict=True), default=None,
                        help="AlphaEdit: eigenvalues of C below this span the null space the update may use (default "
                             "0.01; see `stats --nullspace`)")
    parser.add_argument("--l2", type=number_at_least(0), default=None, help="AlphaEdit's ridge term (default 10)")
    parser.add_argument("--early-stop", type=number_at_least(0, int), default=None, metavar="STEPS",
                        help="stop each target's optimization STEPS steps after the new object is the top token on all "
                             "its prompts (ENCORE's MPES; default 2 for encore, 0 = off for the others)")
    parser.add_argument("--norm-lambda", type=number_at_least(0), default=None, help="ENCORE's norm constraint on ||Delta|| (default 20)")
    parser.add_argument("--step-size", type=number_at_least(0, strict=True), default=None,
                        help="UltraEdit's step size eta in v = -eta ||k_hat||^2 g_hat (default 1e-6, the paper's for 7B models)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="any other setting of the method, e.g. --set steps=10 (repeatable; `python -m editor methods` "
                             "lists each method's settings and defaults)")


def add_generation_success_argument(parser: argparse.ArgumentParser) -> None:
    """--no-generation-success: leave out ES/PS/NS by greedy generation (SPEC 6), reported by default."""
    parser.add_argument("--no-generation-success", action="store_true",
                        help="leave out ES-gen/PS-gen/NS-gen (success when greedy generation from the prompt alone starts "
                             "with the object; reported by default beside ES/PS/NS)")


def build_parser(prog: str = "python -m editor") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Locus editor: covariance statistics, MEMIT/ROME edits, CounterFact evaluation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stats = commands.add_parser("stats", help="compute (or show cached) covariance statistics C_l")
    stats.add_argument("--layers", required=True, help="e.g. 2-6")
    stats.add_argument("--tokens", type=int, default=None, help="corpus tokens (default: the model family's default budget)")
    stats.add_argument("--corpus", default="wikipedia", help="'wikipedia' or a .txt / .jsonl file")
    stats.add_argument("--no-cache", action="store_true", help="compute even if cached, and do not write the cache")
    stats.add_argument("--nullspace", default=None, metavar="THRESHOLDS",
                       help="also show AlphaEdit's null space at these thresholds (e.g. 0.005,0.01,0.02): its size and "
                            "the share of the text keys' energy in it")
    add_model_arguments(stats)
    add_worker_arguments(stats)
    stats.set_defaults(handler=command_stats)

    evaluate = commands.add_parser("evaluate", help="edit CounterFact records and report ES/PS/NS/S before and after")
    evaluate.add_argument("--data", required=True, help=RECORDS_HELP)
    evaluate.add_argument("--layers", default=None, help=LAYERS_HELP)
    evaluate.add_argument("--method", default="memit", choices=METHOD_NAMES)
    evaluate.add_argument("--mode", default="batch", choices=["batch", "single"])
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N records")
    add_covariance_arguments(evaluate)
    add_method_arguments(evaluate)
    evaluate.add_argument("--no-generation", action="store_true", help="skip the fluency (GE) generations")
    add_generation_success_argument(evaluate)
    evaluate.add_argument("--out", default=None, help="write the metrics JSON here")
    evaluate.add_argument("--no-cache", action="store_true",
                          help="single mode: evaluate every record again (finished records are cached, so a rerun resumes)")
    add_model_arguments(evaluate)
    add_worker_arguments(evaluate)
    evaluate.set_defaults(handler=command_evaluate)

    edit = commands.add_parser("edit", help="rewrite one fact and show the predictions before and after")
    edit.add_argument("--subject", required=True, help="the words that name the subject, e.g. 'Eiffel Tower'")
    edit.add_argument("--prompt", required=True, help="template with {} for the subject, or a prompt that contains it")
    edit.add_argument("--target-new", required=True, help="the new object, e.g. 'Rome'")
    edit.add_argument("--target-true", default=None, help="the current object (optional: shown, and refused if equal to the new one)")
    edit.add_argument("--check", action="append", help="another prompt to show before/after (repeatable)")
    edit.add_argument("--layers", default=None, help="R, e.g. 2-6, or auto (the tracer's recommendation); default: the family's")
    edit.add_argument("--method", default="memit", choices=METHOD_NAMES)
    add_covariance_arguments(edit)
    add_method_arguments(edit)
    edit.add_argument("--ledger", default=None, help="start from the edits saved in this ledger file")
    edit.add_argument("--save", default=None, help="save the ledger with this edit (.safetensors)")
    add_model_arguments(edit)
    edit.set_defaults(handler=command_edit)

    sweep = commands.add_parser(
        "sweep", help="edit quality against the covariance token budget and lambda (targets optimized once)"
    )
    sweep.add_argument("--data", required=True, help=RECORDS_HELP)
    sweep.add_argument("--tokens", dest="budgets", required=True, help="covariance token budgets, e.g. 10000,25000,50000,100000")
    sweep.add_argument("--lambda", dest="lambdas", default=None, help="lambdas, e.g. 500,1500,15000 (default: the family's)")
    sweep.add_argument("--layers", default=None, help=LAYERS_HELP)
    sweep.add_argument("--method", default="memit", choices=METHOD_NAMES,
                        help="an editing method that reuses targets (not rome); `python -m editor methods` lists them")
    sweep.add_argument("--limit", type=int, default=None, help="only the first N records")
    sweep.add_argument("--corpus", default=None, help="covariance corpus: 'wikipedia' or a file")
    add_method_arguments(sweep)
    sweep.add_argument("--generation", action="store_true", help="also generate texts for fluency (GE); slow")
    add_generation_success_argument(sweep)
    sweep.add_argument("--out", default=None, help="write the table as JSON here")
    sweep.add_argument("--no-cache", action="store_true",
                       help="compute every setting again (finished settings are cached, so a rerun resumes)")
    add_model_arguments(sweep)
    add_worker_arguments(sweep)
    sweep.set_defaults(handler=command_sweep)

    layers = commands.add_parser(
        "layers", help="R measured by editing: edit the records at each window of layers, beside the tracing curve"
    )
    layers.add_argument("--data", required=True, help=RECORDS_HELP)
    layers.add_argument("--limit", type=int, default=None, help="only the first N records")
    layers.add_argument("--width", type=int, default=5, help="layers per window for --windows all and the tracing R (default 5)")
    layers.add_argument("--windows", default="all", help="all (every window of --width layers) or ranges, e.g. 1-5,2-6,10-14")
    layers.add_argument("--trace-facts", type=int, default=20,
                        help="known facts behind the averaged tracing curve (default 20; cached, packaged for the embedded model)")
    layers.add_argument("--method", default="memit", choices=METHOD_NAMES,
                        help="an editing method that reuses targets (not rome); `python -m editor methods` lists them")
    add_covariance_arguments(layers)
    add_method_arguments(layers)
    add_generation_success_argument(layers)
    layers.add_argument("--no-cache", action="store_true", help="measure every window again (and do not write the cache)")
    layers.add_argument("--out", default=None, help="write the windows as JSON here")
    add_model_arguments(layers)
    layers.set_defaults(handler=command_layers)

    devset = commands.add_parser("devset", help="rebuild the dev set of CounterFact records the model knows")
    devset.add_argument("--out", default=None, help="default: assets/devset_<model>.json")
    devset.add_argument("--max-records", type=int, default=130, help="at most this many records (default 130)")
    add_model_arguments(devset)
    devset.set_defaults(handler=command_devset)

    lifelong = commands.add_parser("lifelong-set", help="rebuild the lifelong set of CounterFact records for sequential editing")
    lifelong.add_argument("--out", default=None, help="default: assets/lifelong_counterfact.json")
    lifelong.add_argument("--max-records", type=int, default=1100, help="at most this many records (default 1,100)")
    lifelong.set_defaults(handler=command_lifelong_set)

    sequential = commands.add_parser(
        "sequential", help="edit batch after batch on top of the earlier ones, measuring quality and model health after each"
    )
    sequential.add_argument("--data", required=True, help="CounterFact-format JSON, e.g. assets/lifelong_counterfact.json")
    sequential.add_argument("--batch-size", type=int, default=100, help="edits per batch (default 100)")
    sequential.add_argument("--batches", type=int, default=10, help="number of batches (default 10)")
    sequential.add_argument("--method", default="alphaedit", choices=METHOD_NAMES,
                            help="alphaedit (default), or another method that edits batches (`python -m editor methods`)")
    sequential.add_argument("--layers", default=None, help=LAYERS_HELP)
    add_covariance_arguments(sequential, lambda_help="MEMIT's lambda (default: the family's)")
    add_method_arguments(sequential)
    add_generation_success_argument(sequential)
    sequential.add_argument("--collapse-ratio", type=float, default=2.0, help="stop when perplexity exceeds this x the unedited's")
    sequential.add_argument("--out", default=None, help="write the curves as JSON here (after every batch)")
    sequential.add_argument("--ledger-out", default=None, help="save the last healthy ledger here (after every batch)")
    sequential.add_argument("--resume", action="store_true", help="continue the run in --out / --ledger-out")
    sequential.add_argument("--unedited-from", default=None, metavar="RUN.json",
                            help="take the unedited model's figures from an earlier run on the same data and model "
                                 "(saves measuring them again, about 12 minutes on a CPU)")
    sequential.add_argument("--html", default=None, help="write an HTML page with the curves")
    sequential.add_argument("--compare", action="append", help="another run's JSON to plot beside this one (repeatable)")
    sequential.add_argument("--label", default=None, help="this run's name in the plot (default: the method)")
    add_model_arguments(sequential)
    sequential.set_defaults(handler=command_sequential)

    damage = commands.add_parser(
        "damage", help="which known facts a ledger's edits break, and whether random updates of the same size break as many"
    )
    damage.add_argument("--ledger", required=True, help="an edit ledger (.safetensors), e.g. a sequential run's --ledger-out")
    damage.add_argument("--batches", type=int, default=None, help="only the ledger's first N batches")
    damage.add_argument("--data", default=None, help="also leave these records' subjects out of the probe set "
                        "(a sequential run's probe set: its --data with --limit batch-size x batches)")
    damage.add_argument("--limit", type=int, default=None, help="the first N records of --data")
    damage.add_argument("--scales", default="0.5,1,2", help="random-update sizes, x the edits' change per matrix "
                        "(default 0.5,1,2; '' for none)")
    damage.add_argument("--seeds", type=int, default=3, help="random updates per scale (default 3)")
    damage.add_argument("--out", default=None, help="write the report as JSON here")
    add_model_arguments(damage)
    damage.set_defaults(handler=command_damage)

    methods = commands.add_parser("methods", help="list the editing methods and their own settings")
    methods.set_defaults(handler=command_methods)

    plot = commands.add_parser("sequential-plot", help="one HTML page with the curves of sequential runs (their --out JSON)")
    plot.add_argument("runs", nargs="+", help="JSON files written by `python -m editor sequential --out`")
    plot.add_argument("--html", required=True, help="the HTML file to write")
    plot.set_defaults(handler=command_sequential_plot)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m editor") -> int:
    return run_parsed(build_parser(prog), argv, "interrupted (a covariance pass resumes from its last checkpoint next time)")
