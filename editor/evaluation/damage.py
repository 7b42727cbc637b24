"""Is an edit's damage to known facts its own, or only the size of its change? A control with random updates.

For a ledger, `damage_report` measures retention of the probe facts with the edits, which facts were
lost and how firmly the unedited model knew them (the margin of the known answer in log-probability),
and, as a control, retention when each edited matrix instead gets a random Gaussian update of the
same Frobenius norm (times a scale). When random updates of the same size lose as many facts, the
loss comes from the size of the change and from facts the model barely knew, not from what was edited.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from core.errors import InputError
from core.facts import KnownFact
from core.loading import LoadedModel
from core.progress import Progress, stage
from editor.edits.ledger import EditLedger
from editor.edits.weights import add_delta, projection_weight, restore, snapshot
from editor.evaluation.health import lost_fact, probe_answers

MAX_SCALES = 8
MAX_SEEDS = 10
FRAGILE_MARGIN = 0.2  # log-probability: an answer that leads by less than this is barely known


def random_update_like(delta: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian matrix shaped like `delta` (d, m) whose Frobenius norm is `scale` x ||delta||."""
    noise = torch.randn(delta.shape, generator=generator, dtype=torch.float64)
    return (noise * (scale * float(delta.double().norm()) / float(noise.norm()))).to(delta.dtype)


@dataclass
class DamageReport:
    """Retention with a ledger's edits, the facts lost with their unedited margins, and the random-update control."""

    edits: int
    probes: int
    retention: float  # percent of the probe facts kept with the edits
    forgotten: list[dict]  # {prompt, expected, answer, unedited_margin} per fact lost
    change_norms: dict[int, float]  # ||Delta_l||_F of the ledger, per edited layer
    random_retention: dict[float, list[float]] = field(default_factory=dict)  # scale -> retention per seed
    unedited_margins: list[float] = field(default_factory=list)

    @property
    def fragile(self) -> int:
        """Probe facts the unedited model knew by less than FRAGILE_MARGIN."""
        return sum(margin < FRAGILE_MARGIN for margin in self.unedited_margins)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["random_retention"] = {str(scale): values for scale, values in self.random_retention.items()}
        data["fragile"] = self.fragile
        return data

    def text(self) -> str:
        """The report in plain words and a small table."""
        lost_fragile = sum(fact["unedited_margin"] < FRAGILE_MARGIN for fact in self.forgotten)
        lines = [f"{self.edits} edits: retention {self.retention:.0f}% of {self.probes} known facts "
                 f"({len(self.forgotten)} lost; {lost_fragile} of them known by less than {FRAGILE_MARGIN} in log-probability; "
                 f"{self.fragile} of all probes are that fragile).",
                 "Facts lost (unedited margin, now answered):"]
        lines += [f"  {fact['unedited_margin']:6.2f}  {fact['prompt']} -> {fact['answer'].strip()!r} (knew {fact['expected']!r})"
                  for fact in sorted(self.forgotten, key=lambda fact: fact["unedited_margin"])]
        if self.random_retention:
            lines.append("Control: a random update of each edited matrix, Frobenius norm = scale x the edits' change:")
            lines.append(f"{'scale':>6}  retention per seed")
            for scale, values in self.random_retention.items():
                lines.append(f"{scale:>6g}  " + " ".join(f"{value:.0f}" for value in values))
        return "\n".join(lines)


def check_control(scales: list[float], seeds: int) -> None:
    """Bounds of the control, checked before any work."""
    if len(scales) > MAX_SCALES or any(not 0 <= scale <= 100 for scale in scales):
        raise InputError(f"Give at most {MAX_SCALES} scales, each between 0 and 100.")
    if not 0 <= seeds <= MAX_SEEDS:
        raise InputError(f"Seeds must be between 0 and {MAX_SEEDS}, got {seeds}.")


def damage_report(
    loaded: LoadedModel,
    ledger: EditLedger,
    probes: list[KnownFact],
    scales: list[float] = (0.5, 1.0, 2.0),
    seeds: int = 3,
    progress: Progress | None = None,
) -> DamageReport:
    """Retention with `ledger`, the facts it loses, and retention under random updates of the same norms x each scale.

    The weights are exactly as before when it returns or fails.
    """
    scales = list(scales)
    check_control(scales, seeds)
    if not len(ledger):
        raise InputError("The ledger has no edits to examine.")
    trials = len(scales) * seeds
    with loaded.lock:
        unedited = probe_answers(loaded, probes, stage(progress, 0.0, 0.1))
        layers = list(ledger.layers)
        originals = snapshot(loaded, layers)
        with ledger.applied(loaded):
            edited = probe_answers(loaded, probes, stage(progress, 0.1, 0.2))
            deltas = {layer: projection_weight(loaded, layer).detach().double() - originals[layer].double() for layer in layers}
        forgotten = [
            {**lost_fact(fact, answer, loaded.tokenizer), "unedited_margin": margin}
            for fact, answer, now, before, margin in zip(probes, edited.answers, edited.kept, unedited.kept, unedited.margins)
            if before and not now
        ]
        report = DamageReport(
            edits=len(ledger.requests), probes=len(probes), retention=edited.retention,
            forgotten=forgotten, change_norms={layer: float(delta.norm()) for layer, delta in deltas.items()},
            unedited_margins=list(unedited.margins),
        )
        done = 0
        for scale in scales:
            values = []
            for seed in range(seeds):
                generator = torch.Generator().manual_seed(seed)
                try:
                    for layer in layers:
                        add_delta(projection_weight(loaded, layer), random_update_like(deltas[layer], scale, generator).float())
                    values.append(probe_answers(loaded, probes).retention)
                finally:
                    restore(loaded, originals)
                done += 1
                if progress is not None:
                    progress(0.2 + 0.8 * done / trials, f"random control: scale {scale:g}, seed {seed + 1} of {seeds}")
            report.random_retention[scale] = values
    return report
