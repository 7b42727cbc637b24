"""What both trace engines share (SPEC sections 1 and 6): settings, results, and a prompt prepared for tracing.

`prepare_trace` validates the input, finds the subject's tokens, runs the clean pass and builds the
corrupted rows (noise, or the subject's tokens swapped: `tracer.corruption`); the engines
(`tracer.reference`, `tracer.fast_trace`) fill an `empty_result` from it. A run is scored by
`TraceProblem.metric_values` (`tracer.metrics`), the same function in every engine.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field

import numpy
import torch

from core.errors import InputError
from core.hooks import capture_inputs, capture_outputs, forward_hooks, output_tensor, sequence_view
from core.kinds import HEADS, KINDS, TRACE_KINDS
from core.loading import LoadedModel
from core.tokens import EncodedPrompt, encode_prompt, target_token_ids
from tracer.corruption import Corruption, noise_corruption, token_replacement
from tracer.metrics import contrast_token, metric_values
from tracer.modes import AUTO, CORRUPTIONS, HEAD_POSITIONS, METRICS, metric_label, metric_name
from tracer.noise import NOISE_TYPES, draw_noise, noise_level, parse_noise, scaled_noise

MAX_TRACE_TOKENS = 256  # a trace costs ~ tokens^2 x layers forwards: longer prompts are refused
ENGINES = ("fast", "reference")
TOKEN_CLASSES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first token after the subject",
    "further tokens",
    "last token",
)


# --- settings and results ----------------------------------------------------------------------

@dataclass
class TraceSettings:
    """How to trace: kinds, corrupted samples, noise (\"3x\" = 3 sigma, or absolute), window, seed, answer,
    corruption (noise | replace | resample, with a replacement subject or "auto"), metric, where heads are restored."""

    kinds: tuple[str, ...] = KINDS
    samples: int = 10
    noise: str | float = "3x"
    noise_type: str = "gaussian"
    window: int = 10
    seed: int = 1
    answer: str | None = None
    occurrence: int = 0
    chat: bool = False
    engine: str = "fast"
    corruption: str = "noise"
    replacement: str | None = None  # replace: a subject with as many tokens, or "auto" (also when left out)
    metric: str = "prob"
    counterfactual_answer: str | None = None  # logit-diff: a'; default: the corrupted run's top token
    head_positions: str = "last"  # heads: restored at the last token, or at every token

    def __post_init__(self) -> None:
        if isinstance(self.kinds, str):
            self.kinds = tuple(kind.strip() for kind in self.kinds.split(",") if kind.strip())
        else:
            self.kinds = tuple(self.kinds)

    def validate(self) -> None:
        """Raise InputError with a plain message for any unusable setting."""
        if not self.kinds:
            raise InputError("Choose at least one kind to trace: hidden, mlp, attn or heads.")
        unknown = [kind for kind in self.kinds if kind not in TRACE_KINDS]
        if unknown:
            raise InputError(f"Unknown kind(s) {', '.join(map(repr, unknown))}: use hidden, mlp, attn and/or heads.")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples <= 0:
            raise InputError(f"Samples must be a whole number >= 1, got {self.samples!r}.")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window <= 0:
            raise InputError(f"The window must be a whole number of layers >= 1, got {self.window!r}.")
        if self.noise_type not in NOISE_TYPES:
            raise InputError(f"Unknown noise type {self.noise_type!r}: use {' or '.join(NOISE_TYPES)}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise InputError(f"The seed must be a whole number between 0 and 2**32 - 1, got {self.seed!r}.")
        if self.engine not in ENGINES:
            raise InputError(f"Unknown engine {self.engine!r}: use {' or '.join(ENGINES)}.")
        if not isinstance(self.occurrence, int) or self.occurrence < 0:
            raise InputError(f"The subject occurrence must be >= 0, got {self.occurrence!r}.")
        parse_noise(self.noise)
        self._validate_modes()

    def _validate_modes(self) -> None:
        if self.corruption not in CORRUPTIONS:
            raise InputError(f"Unknown corruption {self.corruption!r}: use noise, replace (one counterfactual subject) or resample.")
        if self.replacement is not None:
            if self.corruption != "replace":
                raise InputError("A replacement subject is used only with the replace corruption (--corruption replace).")
            if not str(self.replacement).strip():
                raise InputError("The replacement subject is empty: type a subject with as many tokens as yours, or auto.")
        if self.metric not in METRICS:
            raise InputError(f"Unknown metric {self.metric!r}: use prob, logit-diff or logprob.")
        if self.counterfactual_answer is not None:
            if self.metric != "logit-diff":
                raise InputError("A counterfactual answer is used only by the logit-diff metric (--metric logit-diff).")
            if not str(self.counterfactual_answer).strip():
                raise InputError("The counterfactual answer is empty: leave it out to use the corrupted run's top token.")
        if self.head_positions not in HEAD_POSITIONS:
            raise InputError(f"Heads are restored at the last token or at all tokens, got {self.head_positions!r}: use last or all.")

    @property
    def site_kinds(self) -> tuple[str, ...]:
        """The kinds traced as token x layer matrices (hidden, mlp, attn; not heads)."""
        return tuple(kind for kind in self.kinds if kind in KINDS)

    @property
    def replacement_text(self) -> str | None:
        """The replacement subject to use (replace: the given text, else auto), None for the other corruptions."""
        if self.corruption != "replace":
            return None
        return AUTO if self.replacement is None else str(self.replacement)

    def window_for(self, kind: str) -> int:
        """Restoration window of `kind`: 1 for hidden states and heads, `window` for mlp and attn."""
        return 1 if kind in ("hidden", HEADS) else self.window

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kinds"] = list(self.kinds)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TraceSettings:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass
class TraceResult:
    """A trace: restored probabilities {kind: T x L} (NaN = not computed yet) and everything used."""

    prompt: str
    subject: str
    tokens: list[str]
    subject_range: tuple[int, int]
    answer: str
    answer_id: int
    high: float
    low: float
    scores: dict[str, list[list[float]]]
    settings: TraceSettings
    noise_level: float
    model: str
    num_layers: int
    approximate: bool = False
    elapsed: float = 0.0
    engine: str = "fast"
    input_ids: list[int] = field(default_factory=list)
    contrast: str = ""  # logit-diff: the token a' whose logit is subtracted
    contrast_id: int = -1
    replacements: list[str] = field(default_factory=list)  # replace/resample: the subject of each corrupted row
    corruption_note: str = ""  # how an automatic replacement was chosen, in plain words
    head_scores: list[list[float]] = field(default_factory=list)  # heads x layers (NaN = not computed yet)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The token x layer kinds in this result (heads are in `head_scores`)."""
        return tuple(kind for kind in KINDS if kind in self.scores)

    @property
    def has_heads(self) -> bool:
        return bool(self.head_scores)

    @property
    def metric(self) -> str:
        return self.settings.metric

    def set_cell(self, kind: str, row: int, layer: int, value: float) -> None:
        """Store one computed cell: `row` is the token (hidden/mlp/attn) or the head (heads)."""
        if kind == HEADS:
            self.head_scores[row][layer] = value
        else:
            self.scores[kind][row][layer] = value

    def head_matrix(self) -> numpy.ndarray:
        """Restored scores of single heads as a (heads, L) float array (NaN where not computed)."""
        return numpy.asarray(self.head_scores, dtype=float).reshape(len(self.head_scores), self.num_layers)

    def head_effect(self) -> numpy.ndarray:
        """IE of single heads = restored - low, (heads, L)."""
        return self.head_matrix() - self.low

    def normalized_effect(self, kind: str) -> numpy.ndarray:
        """(restored - low) / (high - low), (T, L) (or (heads, L) for heads); NaN when high == low."""
        effect = self.head_effect() if kind == HEADS else self.indirect_effect(kind)
        total = self.total_effect
        return effect / total if total != 0 else numpy.full_like(effect, math.nan)

    @property
    def total_effect(self) -> float:
        """TE = high - low."""
        return self.high - self.low

    def score_matrix(self, kind: str) -> numpy.ndarray:
        """Restored probabilities of `kind` as a (T, L) float array (NaN where not computed)."""
        return numpy.asarray(self.scores[kind], dtype=float)

    def indirect_effect(self, kind: str) -> numpy.ndarray:
        """IE = restored - low, (T, L)."""
        return self.score_matrix(kind) - self.low

    def fraction_done(self) -> float:
        """Share of cells computed so far (0..1)."""
        matrices = [self.score_matrix(kind) for kind in self.kinds] + ([self.head_matrix()] if self.has_heads else [])
        total = sum(matrix.size for matrix in matrices)
        return float(sum(numpy.isfinite(matrix).sum() for matrix in matrices) / total) if total else 1.0

    def token_classes(self) -> list[list[str]]:
        """For each token, the SPEC token classes it belongs to (a token can be in two)."""
        return token_classes(len(self.tokens), self.subject_range)

    def to_dict(self) -> dict:
        """JSON-safe dict (NaN written as null)."""
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "tokens": list(self.tokens),
            "input_ids": list(self.input_ids),
            "subject_range": list(self.subject_range),
            "answer": self.answer,
            "answer_id": self.answer_id,
            "high": self.high,
            "low": self.low,
            "total_effect": self.total_effect,
            "scores": {kind: [[_json_float(v) for v in row] for row in rows] for kind, rows in self.scores.items()},
            "head_scores": [[_json_float(v) for v in row] for row in self.head_scores],
            "metric": self.settings.metric,
            "metric_name": metric_name(self.settings.metric),
            "score": metric_label(self.settings.metric, self.answer, self.contrast),
            "corruption": self.settings.corruption,
            "corruption_note": self.corruption_note,
            "contrast": self.contrast,
            "contrast_id": self.contrast_id,
            "replacements": list(self.replacements),
            "settings": self.settings.to_dict(),
            "windows": {kind: self.settings.window_for(kind) for kind in self.scores},
            "noise_level": self.noise_level,
            "model": self.model,
            "num_layers": self.num_layers,
            "approximate": self.approximate,
            "elapsed": self.elapsed,
            "engine": self.engine,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TraceResult:
        return cls(
            prompt=data["prompt"],
            subject=data["subject"],
            tokens=list(data["tokens"]),
            subject_range=tuple(data["subject_range"]),
            answer=data["answer"],
            answer_id=int(data["answer_id"]),
            high=float(data["high"]),
            low=float(data["low"]),
            scores={kind: [[math.nan if v is None else float(v) for v in row] for row in rows] for kind, rows in data["scores"].items()},
            settings=TraceSettings.from_dict(data.get("settings", {})),
            noise_level=float(data["noise_level"]),
            model=data.get("model", ""),
            num_layers=int(data.get("num_layers") or len(next(iter(data["scores"].values()))[0])),
            contrast=data.get("contrast", ""),
            contrast_id=int(data.get("contrast_id", -1)),
            replacements=list(data.get("replacements", [])),
            corruption_note=data.get("corruption_note", ""),
            head_scores=[[math.nan if v is None else float(v) for v in row] for row in data.get("head_scores", [])],
            approximate=bool(data.get("approximate", False)),
            elapsed=float(data.get("elapsed", 0.0)),
            engine=data.get("engine", "fast"),
            input_ids=list(data.get("input_ids", [])),
        )

    def to_csv(self) -> str:
        """One line per cell: kind, token index, token, layer, restored score (the metric), indirect effect, head, and
        the metric's name and formula (e.g. "logit difference", "logit(Paris) − logit(Rome)").

        Head cells have kind "heads", the head in the column `head`, and token index -1 when the head was
        restored at every token (else the last token's index). Probabilities are fractions (0.7 = 70%).
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["kind", "token_index", "token", "is_subject", "layer", "restored", "indirect_effect", "head", "metric", "score"])
        named = [metric_name(self.settings.metric), metric_label(self.settings.metric, self.answer, self.contrast)]
        begin, end = self.subject_range
        for kind in self.kinds:
            for index, row in enumerate(self.scores[kind]):
                for layer, value in enumerate(row):
                    restored = "" if math.isnan(value) else f"{value:.8g}"
                    effect = "" if math.isnan(value) else f"{value - self.low:.8g}"
                    writer.writerow([kind, index, self.tokens[index], int(begin <= index < end), layer, restored, effect, "", *named])
        every = self.settings.head_positions == "all"
        index, token = (-1, "(every token)") if every else (len(self.tokens) - 1, self.tokens[-1])
        for head, row in enumerate(self.head_scores):
            for layer, value in enumerate(row):
                restored = "" if math.isnan(value) else f"{value:.8g}"
                effect = "" if math.isnan(value) else f"{value - self.low:.8g}"
                writer.writerow([HEADS, index, token, 0, layer, restored, effect, head, *named])
        return buffer.getvalue()


@dataclass
class TraceUpdate:
    """One step of a streaming trace: the partial result (NaN = not yet computed) and the share done."""

    result: TraceResult
    fraction: float
    done: bool = False
    message: str = ""

    def to_dict(self) -> dict:
        return {"result": self.result.to_dict(), "fraction": self.fraction, "done": self.done, "message": self.message}


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# --- plain functions ---------------------------------------------------------------------------

def window_layers(layer: int, window: int, num_layers: int) -> range:
    """Layers restored for a cell at `layer`: [max(0, l - w//2), min(L, l + w - w//2))."""
    return range(max(0, layer - window // 2), min(num_layers, layer + window - window // 2))


def token_classes(num_tokens: int, subject_range: tuple[int, int]) -> list[list[str]]:
    """The SPEC token classes of every token, as ROME's averages define them (a token can be in two)."""
    begin, end = subject_range
    last = num_tokens - 1
    classes: list[list[str]] = [[] for _ in range(num_tokens)]
    classes[begin].append(TOKEN_CLASSES[0])
    for index in range(begin + 1, end - 1):
        classes[index].append(TOKEN_CLASSES[1])
    classes[end - 1].append(TOKEN_CLASSES[2])
    if end <= last:
        classes[end].append(TOKEN_CLASSES[3])
    for index in range(end + 1, last):
        classes[index].append(TOKEN_CLASSES[4])
    if TOKEN_CLASSES[5] not in classes[last]:
        classes[last].append(TOKEN_CLASSES[5])
    return classes


# --- preparing a trace -------------------------------------------------------------------------

@dataclass
class TraceProblem:
    """A prompt ready to trace: ids (1, T), subject [b, e), answer, clean states, the corrupted rows (S of them)."""

    prompt: str
    subject: str
    encoded: EncodedPrompt
    input_ids: torch.Tensor
    subject_range: tuple[int, int]
    answer_id: int
    answer: str
    high: float
    corruption: Corruption
    noise_level: float
    settings: TraceSettings
    clean_states: dict[str, torch.Tensor]  # module name -> (1, T, d) clean output
    contrast_id: int | None = None  # logit-diff: a'
    contrast: str = ""
    clean_head_inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (1, T, heads * head_dim)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def samples(self) -> int:
        """Corrupted rows per run: the noise samples, 1 for replace, the drawn subjects for resample."""
        return self.corruption.samples

    @property
    def noise(self) -> torch.Tensor | None:
        """The noise (S, e-b, d) float64 of the noise corruption (None for the token corruptions)."""
        return self.corruption.noise

    def corrupt_(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Apply the corruption's noise in place to the token-embedding outputs (rows, T, d) of corrupted rows."""
        return self.corruption.apply_(embeddings)

    def metric_values(self, logits: torch.Tensor) -> torch.Tensor:
        """The trace's metric of every row: (..., vocab) last-position logits -> (...) float32."""
        return metric_values(logits, self.settings.metric, self.answer_id, self.contrast_id)

    def head_positions(self) -> range:
        """Positions where a head cell restores the head's output: the last token, or every token."""
        return range(self.num_tokens - 1, self.num_tokens) if self.settings.head_positions == "last" else range(self.num_tokens)


@torch.inference_mode()
def corrupted_logits(loaded: LoadedModel, corruption: Corruption) -> torch.Tensor:
    """Last-position logits (S, vocab) of the corrupted rows without any restoration."""
    layout = loaded.layout

    def corrupt(module, args, output):
        corruption.apply_(output_tensor(output))
        return output

    with forward_hooks(loaded.model, {layout.token_embedding: corrupt}):
        return loaded.model(corruption.input_ids).logits[:, -1]


def build_corruption(loaded: LoadedModel, encoded: EncodedPrompt, input_ids: torch.Tensor, subject: str,
                     subject_range: tuple[int, int], answer: str, settings: TraceSettings) -> tuple[Corruption, float]:
    """(the corrupted rows, the noise level nu; 0 for the token corruptions)."""
    if settings.corruption == "noise":
        level = noise_level(loaded, settings.noise)
        begin, end = subject_range
        unit = draw_noise(settings.samples, end - begin, loaded.layout.hidden_size, settings.seed, settings.noise_type)
        return noise_corruption(input_ids, subject_range, scaled_noise(level, unit)), level
    corruption = token_replacement(
        loaded.tokenizer, encoded, subject, settings.occurrence, subject_range, settings.corruption,
        replacement=settings.replacement_text, samples=settings.samples, seed=settings.seed, answer=answer,
    )
    corruption.input_ids = corruption.input_ids.to(input_ids.device)
    return corruption, 0.0


@torch.inference_mode()
def prepare_trace(loaded: LoadedModel, prompt: str, subject: str, settings: TraceSettings) -> TraceProblem:
    """Validate the input, tokenize, find the subject, run the clean pass, pick the answer, build the corrupted rows."""
    settings.validate()
    layout = loaded.layout
    if HEADS in settings.kinds and not layout.supports_heads:
        raise InputError(f"Head-level traces need the attention output projection and head count of {layout.model_type!r}, "
                         "which Locus could not find; trace hidden, mlp or attn instead.")
    limit = min(MAX_TRACE_TOKENS, loaded.max_length)
    encoded = encode_prompt(loaded.tokenizer, prompt, chat=settings.chat, max_tokens=limit)
    if subject is None or not subject.strip():
        raise InputError("The subject is empty: type the words of the prompt that name the subject.")
    subject_range = encoded.subject_range(subject, settings.occurrence)
    input_ids = torch.tensor([encoded.input_ids], dtype=torch.long, device=loaded.device)
    sites = [layout.site(kind, layer) for kind in KINDS for layer in range(layout.num_layers)]
    projections = [layout.attention_output_projection(layer) for layer in range(layout.num_layers)] if HEADS in settings.kinds else []
    with capture_outputs(loaded.model, sites) as outputs, capture_inputs(loaded.model, projections) as head_inputs:
        logits = loaded.model(input_ids).logits[0, -1]
    clean_states = {name: sequence_view(outputs[name], 1, len(encoded)) for name in sites}
    clean_head_inputs = {layer: sequence_view(head_inputs[name], 1, len(encoded)) for layer, name in enumerate(projections)}
    if settings.answer is None or not str(settings.answer).strip():
        if settings.answer is not None:
            raise InputError("The answer is empty: leave it out to use the model's own prediction, or type a word.")
        answer_id = int(logits.argmax())
    else:
        answer_id = target_token_ids(loaded.tokenizer, str(settings.answer), prompt=encoded.text)[0]
    answer = loaded.tokenizer.decode([answer_id])
    corruption, level = build_corruption(loaded, encoded, input_ids, subject, subject_range, answer, settings)
    contrast_id = None
    if settings.metric == "logit-diff":
        if settings.counterfactual_answer is not None:
            contrast_id = target_token_ids(loaded.tokenizer, str(settings.counterfactual_answer), prompt=encoded.text)[0]
            if contrast_id == answer_id:
                raise InputError(f"The counterfactual answer starts with the same token as the answer ({answer!r}): "
                                 "name another one, or leave it out.")
        else:
            contrast_id = contrast_token(corrupted_logits(loaded, corruption), answer_id)
    high = float(metric_values(logits, settings.metric, answer_id, contrast_id))
    return TraceProblem(
        prompt=prompt,
        subject=subject,
        encoded=encoded,
        input_ids=input_ids,
        subject_range=subject_range,
        answer_id=answer_id,
        answer=answer,
        high=high,
        corruption=corruption,
        noise_level=level,
        settings=settings,
        clean_states=clean_states,
        contrast_id=contrast_id,
        contrast=loaded.tokenizer.decode([contrast_id]) if contrast_id is not None else "",
        clean_head_inputs=clean_head_inputs,
    )


def empty_result(loaded: LoadedModel, problem: TraceProblem, low: float, *, approximate: bool = False, engine: str | None = None) -> TraceResult:
    """A TraceResult with every cell NaN (to be filled)."""
    tokens, layers = problem.num_tokens, loaded.layout.num_layers
    heads = loaded.layout.num_heads if HEADS in problem.settings.kinds else 0
    return TraceResult(
        prompt=problem.prompt,
        subject=problem.subject,
        tokens=list(problem.encoded.tokens),
        subject_range=problem.subject_range,
        answer=problem.answer,
        answer_id=problem.answer_id,
        high=problem.high,
        low=low,
        scores={kind: [[math.nan] * layers for _ in range(tokens)] for kind in KINDS if kind in problem.settings.kinds},
        settings=problem.settings,
        noise_level=problem.noise_level,
        model=loaded.name,
        num_layers=layers,
        approximate=approximate,
        engine=engine or problem.settings.engine,
        input_ids=list(problem.encoded.input_ids),
        contrast=problem.contrast,
        contrast_id=-1 if problem.contrast_id is None else problem.contrast_id,
        replacements=list(problem.corruption.replacements),
        corruption_note=problem.corruption.note,
        head_scores=[[math.nan] * layers for _ in range(heads)],
    )
