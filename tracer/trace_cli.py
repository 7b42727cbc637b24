"""`python -m tracer trace ...` and `python -m tracer average ...` (registered by tracer/cli.py)."""

from __future__ import annotations

import argparse

from core.cli import (
    add_model_arguments,
    add_worker_arguments,
    check_worker_arguments,
    load_from_arguments,
    worker_pool,
    write_json,
    write_text,
)
from core.errors import InputError
from core.kinds import HEADS, KINDS
from tracer.modes import CORRUPTIONS, HEAD_POSITIONS, METRICS, corruption_words, metric_label, metric_name


def _settings(arguments: argparse.Namespace):
    from tracer.problem import TraceSettings  # lazy: torch; --help must stay instant

    settings = TraceSettings(
        kinds=arguments.kinds,
        samples=arguments.samples,
        noise=arguments.noise,
        noise_type=arguments.noise_type,
        window=arguments.window,
        seed=arguments.seed,
        answer=getattr(arguments, "answer", None),
        chat=getattr(arguments, "chat", False),
        engine=getattr(arguments, "engine", "fast"),
        corruption=arguments.corruption,
        replacement=arguments.replacement,
        metric=arguments.metric,
        counterfactual_answer=getattr(arguments, "counterfactual_answer", None),
        head_positions=getattr(arguments, "head_positions", "last"),
    )
    settings.validate()  # fail before the (slow) model load
    return settings


def command_trace(arguments: argparse.Namespace) -> int:
    if not arguments.prompt.strip():
        raise InputError("The prompt is empty: type a sentence that the model should complete.")
    if not arguments.subject.strip():
        raise InputError("The subject is empty: type the words of the prompt that name the subject.")
    settings = _settings(arguments)
    from core.progress import tqdm_progress  # lazy: torch and the trace engine; --help must stay instant
    from core.tokens import find_subject
    from tracer.recommend import recommend_layers
    from tracer.trace import trace

    find_subject(arguments.prompt, arguments.subject)  # a typo fails before the model load
    loaded = load_from_arguments(arguments)
    update, close = tqdm_progress("trace")
    try:
        result = trace(loaded, arguments.prompt, arguments.subject, settings, progress=update)
    finally:
        close()
    begin, end = result.subject_range
    label = metric_label(result.metric, result.answer, result.contrast)
    print(f"{loaded.name}: {result.prompt!r} -> {result.answer!r}")
    how = f"noise {result.noise_level:.4g}" if settings.corruption == "noise" else \
        f"subject {corruption_words(settings.corruption, result.replacements, settings.samples)}"
    print(f"subject {result.subject!r} = tokens {begin}..{end - 1}; {metric_name(result.metric)} {label}: clean {result.high:.4f}, "
          f"corrupted {result.low:.4f}; {how}; {result.elapsed:.1f} s")
    for kind in result.kinds:
        effects = result.indirect_effect(kind)
        token, layer = divmod(int(effects.argmax()), effects.shape[1])
        print(f"  {kind:>6}: strongest restoration at token {token} {result.tokens[token]!r}, layer {layer}: "
              f"{label} = {result.scores[kind][token][layer]:.4f}")
    if result.has_heads:
        effects = result.head_effect()
        head, layer = divmod(int(effects.argmax()), effects.shape[1])
        where = "the last token" if settings.head_positions == "last" else "every token"
        print(f"   heads: strongest single head (restored at {where}): head {head} of layer {layer}: "
              f"{label} = {result.head_scores[head][layer]:.4f}")
    if arguments.out:
        write_json(arguments.out, result.to_dict())
    if arguments.csv:
        print(f"wrote {write_text(arguments.csv, result.to_csv())}")
    if arguments.html:
        from tracer.figures import trace_html  # lazy: plotly, only for --html

        recommendation = recommend_layers(result, width=min(5, result.num_layers)) if "mlp" in result.kinds else None
        print(f"wrote {write_text(arguments.html, trace_html(result, recommendation))}")
    return 0


def command_average(arguments: argparse.Namespace) -> int:
    settings = _settings(arguments)
    if arguments.n <= 0:
        raise InputError(f"--n must be >= 1, got {arguments.n}.")
    check_worker_arguments(arguments)
    from tracer.average import check_average_settings  # lazy: torch; --help must stay instant

    check_average_settings(settings)  # before the model load
    if arguments.package and (arguments.model != "embedded" or settings.kinds != ("mlp",)):
        raise InputError("--package writes the embedded model's MLP-only averages: use --kinds mlp without --model.")
    from core.progress import tqdm_progress  # lazy: torch (below); --help must stay instant
    from tracer.average import average_cache_path, average_traces
    from tracer.recommend import recommend_layers

    loaded = load_from_arguments(arguments)
    print(f"cache: {average_cache_path(loaded, settings)} (a restart continues from it)")
    with worker_pool(arguments) as pool:
        update, close = tqdm_progress("average")
        try:
            result = average_traces(loaded, arguments.n, settings, progress=update, use_cache=not arguments.no_cache, pool=pool)
        finally:
            close()
    print(f"{loaded.name}: {result.n_facts} facts; ATE = {result.total_effect:.4f} ± {result.total_effect_half_width:.4f}")
    for kind in result.kinds:
        token_class, layer, value = result.best(kind)
        print(f"  best {kind:>6} AIE {value:.4f} at the {token_class}, layer {layer}")
    if "mlp" in result.kinds:
        recommendation = recommend_layers(result, width=min(arguments.width, result.num_layers))
        print(f"  recommended R (width {recommendation.width}): layers {recommendation.layers}")
    if arguments.out:
        write_json(arguments.out, result.to_dict())
    if arguments.package:
        from tracer.average import write_packaged  # lazy: torch (above); --help must stay instant

        print(f"wrote {result.n_facts} facts' traces to {write_packaged(loaded, result)} (the packaged averages)")
    return 0


def _trace_arguments(parser: argparse.ArgumentParser, heads: bool = True) -> None:
    kinds = "hidden, mlp, attn, heads (single attention heads)" if heads else "hidden, mlp, attn"
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {kinds} (default: {','.join(KINDS)})")
    parser.add_argument("--samples", type=int, default=10,
                        help="corrupted samples per cell (default 10; replace makes one corrupted run)")
    parser.add_argument("--noise", default="3x", help="'3x' = 3 x the embedding sigma (default), or an absolute level")
    parser.add_argument("--noise-type", default="gaussian", choices=("gaussian", "uniform"), help="noise distribution")
    parser.add_argument("--window", type=int, default=10, help="layers restored around each mlp/attn cell (default 10)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of numpy.random.RandomState for the noise and the resampled subjects (default 1)")
    parser.add_argument("--corruption", default="noise", choices=CORRUPTIONS,
                        help="noise on the subject's embeddings (default, ROME); replace = the subject's tokens swapped for a "
                             "counterfactual subject with as many tokens; resample = per sample, a subject of another known fact")
    parser.add_argument("--replacement", default=None, metavar="TEXT|auto",
                        help="replace: the counterfactual subject, or auto (default): the first same-length subject of the known facts")
    parser.add_argument("--metric", default="prob", choices=METRICS,
                        help="prob = p(answer) (default); logit-diff = logit(answer) - logit(a'); logprob = log p(answer)")


def register_commands(subparsers) -> None:
    """Add the `trace` and `average` subcommands to `python -m tracer`."""
    trace = subparsers.add_parser("trace", help="causal trace of a fact: where is it stored? (JSON and HTML output)")
    trace.add_argument("--prompt", required=True, help="text the model completes, e.g. 'The Eiffel Tower is located in the city of'")
    trace.add_argument("--subject", required=True, help="the words of the prompt that name the subject, e.g. 'Eiffel Tower'")
    trace.add_argument("--answer", default=None, help="answer to follow (its first token); default: the model's prediction")
    _trace_arguments(trace)
    trace.add_argument("--counterfactual-answer", default=None, metavar="TEXT",
                       help="logit-diff: the answer a' whose logit is subtracted (default: the corrupted run's top token)")
    trace.add_argument("--head-positions", default="last", choices=HEAD_POSITIONS,
                       help=f"--kinds {HEADS}: restore each head at the last token (default) or at every token")
    trace.add_argument("--engine", default="fast", choices=("fast", "reference"), help="fast exact engine or the straightforward reference")
    trace.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    trace.add_argument("--out", default=None, help="write the result as JSON here")
    trace.add_argument("--csv", default=None, help="write one line per cell as CSV here")
    trace.add_argument("--html", default=None, help="write a standalone interactive HTML page here (works offline)")
    add_model_arguments(trace)
    trace.set_defaults(handler=command_trace)

    average = subparsers.add_parser("average", help="average traces over facts the model knows (AIE/ATE by token class)")
    average.add_argument("--n", type=int, default=100, help="number of known facts to average (default 100)")
    _trace_arguments(average, heads=False)
    average.add_argument("--width", type=int, default=5, help="width of the recommended layer range R (default 5)")
    average.add_argument("--no-cache", action="store_true", help="recompute every fact instead of resuming from the cache")
    average.add_argument("--out", default=None, help="write the averages as JSON here")
    average.add_argument("--package", action="store_true",
                         help="embedded model, --kinds mlp: also write these traces to assets/ as the packaged averages")
    add_model_arguments(average)
    add_worker_arguments(average)
    average.set_defaults(handler=command_average)
