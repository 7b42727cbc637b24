"""How much of a long measurement each step is, so its progress share follows time from the first step.

A job line estimates the time left as elapsed x (1 - f) / f, which is right only when the share done f grows
in proportion to time. A step's share is therefore its estimated cost, in block passes of one token (a token
through one transformer block, forward) times a factor for the kind of pass, never "one step = one share":
a cached covariance costs nothing, a missing one can be most of the job.

The factors were measured on the embedded SmolLM2-135M on 2 CPU cores (`python -m bench lecture` prints the
estimate against the measured time): a target step is a forward and a backward pass over its rows; scoring runs
short prompts in small batches and decodes greedily, about three times a batched token's cost; a covariance
pass also reads and tokenizes the corpus and sums k k^T (m x m) in float64 per token and layer, about five times.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from core.loading import LoadedModel
from core.progress import Progress, stage
from editor.evaluation.counterfact import CounterFactRecord
from editor.methods.settings import EditSettings
from editor.statistics.covariance import cached_diagnostics

TARGET_STEP_FACTOR = 3.0  # forward + backward of a target optimisation step
SCORING_FACTOR = 3.0  # short prompts, small batches, greedy decoding
COVARIANCE_FACTOR = 5.0  # the block's forward plus k k^T (m x m, float64) per token and layer
TRACE_TOKENS = 12  # a typical fact prompt's tokens (a trace restores one (token, layer) cell per run)
KL_ROW_TOKENS = 5  # '{subject} is a'


def window_layers(windows: list[tuple[int, ...]]) -> list[int]:
    """Every layer of any of `windows`, ascending."""
    return sorted({layer for window in windows for layer in window})


def missing_covariance_layers(loaded: LoadedModel, windows: list[tuple[int, ...]], settings: EditSettings) -> list[int]:
    """The layers of `windows` whose C is neither in memory nor on disk (nothing is computed)."""
    layers = window_layers(windows)
    cached = cached_diagnostics(loaded, layers, settings.cov_tokens, settings.corpus)
    return [layer for layer in layers if layer not in cached]


@dataclass
class WorkPlan:
    """Each step's [start, end) share of the progress bar, in proportion to its estimated cost."""

    bounds: dict[Hashable, tuple[float, float]]

    @classmethod
    def of(
        cls, loaded: LoadedModel, records: list[CounterFactRecord], by_last: dict[int, list[tuple[int, ...]]],
        settings: EditSettings, *, trace_facts: int, score_unedited: bool, covariance_layers: list[int], by_generation: bool,
    ) -> WorkPlan:
        """Steps in the order they run: "trace", "unedited", "covariance", then per last layer ("targets", l) and its windows."""
        layers = loaded.layout.num_layers
        tokenizer = loaded.tokenizer

        def tokens(text: str) -> int:
            return len(tokenizer(text)["input_ids"])

        scoring = 0.0  # one scoring pass: every prompt with the new and the true object
        row_tokens = 0.0  # the target optimisation's rows: each prefix before the rewrite prompt, and the KL prompt
        starts = len(settings.prefix_starts)
        for record in records:
            prompts = [record.rewrite_prompt, *record.paraphrase_prompts, *record.neighborhood_prompts]
            answers = tokens(" " + record.target_new) + tokens(" " + record.target_true)
            scoring += sum(2 * tokens(prompt) + answers for prompt in prompts)
            row = tokens(record.rewrite_prompt) + tokens(" " + record.target_new)
            row_tokens += (starts + 1) * row + starts * settings.prefix_tokens + KL_ROW_TOKENS
        scoring *= layers * SCORING_FACTOR * (2 if by_generation else 1)
        steps: list[tuple[Hashable, float]] = [
            ("trace", trace_facts * TRACE_TOKENS**2 * layers**2),
            ("unedited", scoring if score_unedited else 0.0),
            ("covariance", settings.cov_tokens * (max(covariance_layers) + 1) * COVARIANCE_FACTOR if covariance_layers else 0.0),
        ]
        for last, windows in by_last.items():
            after = layers - last - 1
            steps.append((("targets", last), row_tokens * (last + 1 + settings.steps * TARGET_STEP_FACTOR * after)))
            steps += [(window, scoring) for window in windows]
        total = sum(cost for _, cost in steps) or 1.0
        bounds, done = {}, 0.0
        for name, cost in steps:
            bounds[name] = (done / total, (done + cost) / total)
            done += cost
        return cls(bounds)

    def stage(self, progress: Progress | None, name: Hashable) -> Progress | None:
        """`progress` mapped onto step `name`'s share."""
        low, high = self.bounds[name]
        return stage(progress, low, high)

    def end(self, name: Hashable) -> float:
        """The share done once step `name` has finished."""
        return self.bounds[name][1]
