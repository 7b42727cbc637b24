"""What both trace engines share (SPEC section 1): settings, results, and a prompt prepared for tracing.

`prepare_trace` validates the input, finds the subject's tokens, runs the clean pass and draws the
noise; the engines (`tracer.reference`, `tracer.fast_trace`) fill an `empty_result` from it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field

import numpy
import torch

from core.errors import InputError
from core.hooks import capture_outputs, sequence_view
from core.kinds import KINDS
from core.loading import LoadedModel
from core.tokens import EncodedPrompt, encode_prompt, target_token_ids
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
    """How to trace: kinds, corrupted samples, noise (\"3x\" = 3 sigma, or absolute), window, seed, answer."""

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

    def __post_init__(self) -> None:
        if isinstance(self.kinds, str):
            self.kinds = tuple(kind.strip() for kind in self.kinds.split(",") if kind.strip())
        else:
            self.kinds = tuple(self.kinds)

    def validate(self) -> None:
        """Raise InputError with a plain message for any unusable setting."""
        if not self.kinds:
            raise InputError("Choose at least one kind to trace: hidden, mlp or attn.")
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown:
            raise InputError(f"Unknown kind(s) {', '.join(map(repr, unknown))}: use hidden, mlp and/or attn.")
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

    def window_for(self, kind: str) -> int:
        """Restoration window of `kind`: 1 for hidden states, `window` for mlp and attn."""
        return 1 if kind == "hidden" else self.window

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

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind in KINDS if kind in self.scores)

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
        matrices = [self.score_matrix(kind) for kind in self.kinds]
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
            approximate=bool(data.get("approximate", False)),
            elapsed=float(data.get("elapsed", 0.0)),
            engine=data.get("engine", "fast"),
            input_ids=list(data.get("input_ids", [])),
        )

    def to_csv(self) -> str:
        """One line per cell: kind, token index, token, layer, restored probability, indirect effect."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["kind", "token_index", "token", "is_subject", "layer", "restored", "indirect_effect"])
        begin, end = self.subject_range
        for kind in self.kinds:
            for index, row in enumerate(self.scores[kind]):
                for layer, value in enumerate(row):
                    restored = "" if math.isnan(value) else f"{value:.8g}"
                    effect = "" if math.isnan(value) else f"{value - self.low:.8g}"
                    writer.writerow([kind, index, self.tokens[index], int(begin <= index < end), layer, restored, effect])
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


def answer_probability(logits: torch.Tensor, answer_id: int) -> torch.Tensor:
    """Softmax probability of `answer_id`: (..., vocab) logits -> (...) float32."""
    return torch.softmax(logits.float(), dim=-1)[..., answer_id]


# --- preparing a trace -------------------------------------------------------------------------

@dataclass
class TraceProblem:
    """A prompt ready to trace: ids (1, T), subject [b, e), answer, clean states, noise (S, e-b, d) float64."""

    prompt: str
    subject: str
    encoded: EncodedPrompt
    input_ids: torch.Tensor
    subject_range: tuple[int, int]
    answer_id: int
    answer: str
    high: float
    noise: torch.Tensor
    noise_level: float
    settings: TraceSettings
    clean_states: dict[str, torch.Tensor]  # module name -> (1, T, d) clean output

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def samples(self) -> int:
        return int(self.noise.shape[0])


@torch.inference_mode()
def prepare_trace(loaded: LoadedModel, prompt: str, subject: str, settings: TraceSettings) -> TraceProblem:
    """Validate the input, tokenize, find the subject, run the clean pass, pick the answer, draw the noise."""
    settings.validate()
    limit = min(MAX_TRACE_TOKENS, loaded.max_length)
    encoded = encode_prompt(loaded.tokenizer, prompt, chat=settings.chat, max_tokens=limit)
    if subject is None or not subject.strip():
        raise InputError("The subject is empty: type the words of the prompt that name the subject.")
    subject_range = encoded.subject_range(subject, settings.occurrence)
    input_ids = torch.tensor([encoded.input_ids], dtype=torch.long, device=loaded.device)
    layout = loaded.layout
    sites = [layout.site(kind, layer) for kind in KINDS for layer in range(layout.num_layers)]
    with capture_outputs(loaded.model, sites) as outputs:
        logits = loaded.model(input_ids).logits[0, -1]
    clean_states = {name: sequence_view(outputs[name], 1, len(encoded)) for name in sites}
    if settings.answer is None or not str(settings.answer).strip():
        if settings.answer is not None:
            raise InputError("The answer is empty: leave it out to use the model's own prediction, or type a word.")
        answer_id = int(logits.argmax())
    else:
        answer_id = target_token_ids(loaded.tokenizer, str(settings.answer), prompt=encoded.text)[0]
    high = float(answer_probability(logits, answer_id))
    level = noise_level(loaded, settings.noise)
    begin, end = subject_range
    unit = draw_noise(settings.samples, end - begin, layout.hidden_size, settings.seed, settings.noise_type)
    return TraceProblem(
        prompt=prompt,
        subject=subject,
        encoded=encoded,
        input_ids=input_ids,
        subject_range=subject_range,
        answer_id=answer_id,
        answer=loaded.tokenizer.decode([answer_id]),
        high=high,
        noise=scaled_noise(level, unit),
        noise_level=level,
        settings=settings,
        clean_states=clean_states,
    )


def empty_result(loaded: LoadedModel, problem: TraceProblem, low: float, *, approximate: bool = False, engine: str | None = None) -> TraceResult:
    """A TraceResult with every cell NaN (to be filled)."""
    tokens, layers = problem.num_tokens, loaded.layout.num_layers
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
    )


