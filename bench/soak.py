"""Soak driver: simulated visitors against a running Locus server, each its own gradio_client session.

Each visitor owns one fact and loops: /predict on its prompt, /preview trace, a deliberately bad
/predict (an empty prompt, which must be refused), /edit (its own one-request batch), /predict
again (its edit must show), /undo. Every request's latency and outcome is recorded, and every
answer is checked against the visitor's own ledger (which batches it has applied). When the time
is up, visitors with an odd number stop with their edit applied and the others with none; then
every visitor predicts every visitor's prompt: its own edit where it is applied, the original
answer everywhere else (the other visitors' edits must never show). The server's RSS is sampled
throughout by a reader the caller passes in.

Used by bench/bench_soak.py (`python -m bench soak`: the app in a subprocess) and
tests/test_soak.py (the suite's shared server). Only gradio_client, the standard library and numpy:
the parsing of every endpoint's outputs lives in `LocusApi`, one small adapter per endpoint.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from gradio_client import Client
from gradio_client.exceptions import AppError


@dataclass(frozen=True)
class Fact:
    """One visitor's edit: `template` has "{}" where the subject goes; `new_object` is what it writes."""

    subject: str
    template: str
    new_object: str

    @property
    def prompt(self) -> str:
        return self.template.format(self.subject)


# One fact per visitor (visitor i takes FACTS[i % len(FACTS)]): different subjects, each known to the
# embedded model. With 10 optimisation steps each edit shows on its own prompt and leaves the others'
# prompts alone (with 5, half of them did not show yet); the soak checks both at run time.
FACTS = (
    Fact("Eiffel Tower", "{} is located in the city of", "Rome"),
    Fact("Catalonia", "{} belongs to the continent of", "Asia"),
    Fact("Roman Republic", "The capital of {} is", "London"),
    Fact("Comme j'ai mal", "{} is written in", "German"),
    Fact("Philippines", "The capital of {} is", "Tokyo"),
)

BAD_INPUT_REFUSAL = "empty"  # words the refusal of an empty prompt must contain


@dataclass(frozen=True)
class SoakSettings:
    """What the visitors send, and for how long."""

    visitors: int = 3
    seconds: float = 30.0
    top_k: int = 3
    new_tokens: int = 4
    preview_kinds: tuple[str, ...] = ("hidden", "mlp", "attn")
    method: str = "memit"
    layers: str = "2-6"
    cov_tokens: int | None = None  # None: the app's default budget
    steps: int = 10
    learning_rate: float = 0.5
    kl_factor: float = 0.0625
    clamp: float = 0.75
    request_timeout: float = 900.0  # seconds one request may take before it counts as failed
    rss_interval: float = 0.5

    def __post_init__(self) -> None:
        if self.visitors < 1 or self.seconds <= 0:
            raise ValueError(f"need at least one visitor and a positive time, got {self.visitors} and {self.seconds}")


# --- the endpoints: every output's parsing lives here ---------------------------------------


@dataclass(frozen=True)
class Prediction:
    before_top: str  # the original model's most likely next token
    after_top: str  # the visitor's edited model's
    edited: bool  # whether the server says this visitor has edits
    same: bool  # the edited side equals the original side exactly


@dataclass(frozen=True)
class Preview:
    answer: str
    approximate: bool
    kinds: tuple[str, ...]  # the kinds that have scores


@dataclass(frozen=True)
class EditOutcome:
    batch_id: str
    history: tuple[str, ...]  # batch ids in the visitor's history, oldest first


def _json_output(outputs: Sequence[Any], *keys: str) -> dict:
    """The output that is a dict carrying all `keys` (robust to outputs added or moved)."""
    for output in outputs:
        value = output.get("value", output) if isinstance(output, dict) and output.get("__type__") == "update" else output
        if isinstance(value, dict) and all(key in value for key in keys):
            return value
    raise ValueError(f"no output with {', '.join(keys)} among {len(outputs)} outputs")


def _history_ids(outputs: Sequence[Any]) -> tuple[str, ...]:
    """The batch ids of the history table (the Dataframe whose first column is "batch")."""
    for output in outputs:
        value = output.get("value", output) if isinstance(output, dict) and output.get("__type__") == "update" else output
        if isinstance(value, dict) and "data" in value and (value.get("headers") or [None])[0] == "batch":
            return tuple(str(row[0]) for row in value["data"])
    raise ValueError("no history table among the outputs")


def _texts(outputs: Sequence[Any]) -> list[str]:
    return [output for output in outputs if isinstance(output, str)]


class LocusApi:
    """One visitor's session with the app, one method per endpoint, each returning parsed results."""

    EDIT_HEADERS = ["subject", "prompt", "new object", "current answer", "paraphrases", "neighbors"]

    def __init__(self, url: str, settings: SoakSettings):
        self.client = Client(url, verbose=False, analytics_enabled=False)
        self.settings = settings

    def call(self, endpoint: str, *arguments: Any, **named: Any) -> tuple:
        job = self.client.submit(*arguments, api_name=endpoint, **named)
        outputs = job.result(timeout=self.settings.request_timeout)
        return tuple(outputs) if isinstance(outputs, (list, tuple)) else (outputs,)

    def predict(self, prompt: str) -> Prediction:
        data = _json_output(self.call("/predict", prompt, self.settings.top_k, self.settings.new_tokens), "before", "after")
        return Prediction(
            before_top=data["before"]["top"][0]["token"],
            after_top=data["after"]["top"][0]["token"],
            edited=bool(data["edited"]),
            same=data["after"] == data["before"],
        )

    def refused_prediction(self, prompt: str) -> str | None:
        """The refusal message of a bad /predict (an AppError, or a message among the outputs); None if it answered."""
        try:
            outputs = self.call("/predict", prompt, self.settings.top_k, self.settings.new_tokens)
        except AppError as error:
            return str(error)
        messages = [text for text in _texts(outputs) if BAD_INPUT_REFUSAL in text.lower()]
        return messages[0] if messages else None

    def preview(self, fact: Fact) -> Preview:
        outputs = self.call("/preview", fact.prompt, fact.subject, "", list(self.settings.preview_kinds), 10, "3x", 10, 1, "gaussian")
        data = _json_output(outputs, "answer", "scores")
        kinds = tuple(kind for kind, rows in data["scores"].items() if rows)
        return Preview(answer=data["answer"], approximate=bool(data.get("approximate")), kinds=kinds)

    def start_trace(self, fact: Fact, kinds: Sequence[str], samples: int) -> Any:
        """Submit an exact /trace of the fact's prompt (default noise, window and seed); the gradio_client job."""
        return self.client.submit(fact.prompt, fact.subject, "", list(kinds), samples, "3x", 10, 1, "gaussian", api_name="/trace")

    def trace_result(self, job: Any) -> dict:
        """The finished trace's JSON (answer, scores {kind: tokens x layers, None = not computed}, ...)."""
        outputs = job.result(timeout=self.settings.request_timeout)
        return _json_output(tuple(outputs) if isinstance(outputs, (list, tuple)) else (outputs,), "answer", "scores")

    def edit(self, fact: Fact) -> EditOutcome:
        s = self.settings
        table = {"headers": self.EDIT_HEADERS, "data": [[fact.subject, fact.template, fact.new_object, "", "", ""]]}
        # The request is the table's row; the other parameters (the typed request used when the table is empty, each
        # method's own settings) keep the page's values: empty, the model family's defaults.
        outputs = self.call(
            "/edit", table=table, method=s.method, layers=s.layers, cov_tokens=s.cov_tokens, steps=s.steps,
            lr=s.learning_rate, kl_factor=s.kl_factor, clamp_norm=s.clamp,
        )
        return EditOutcome(batch_id=str(_json_output(outputs, "batch_id", "requests")["batch_id"]), history=_history_ids(outputs))

    def undo(self, batch_id: str) -> tuple[str, ...]:
        """The batch ids that remain after undoing `batch_id`."""
        data = _json_output(self.call("/undo", batch_id), "undone", "remaining")
        return tuple(str(item if isinstance(item, str) else item.get("batch_id")) for item in data["remaining"])

    def reset(self) -> None:
        self.call("/reset")

    def close(self) -> None:
        self.client.close()


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request: who sent it, when (seconds after the start), how long it took and how it ended."""

    visitor: int
    endpoint: str
    started: float
    seconds: float
    outcome: str  # "ok", "refused" (a bad input we sent on purpose), "failed" (error), "wrong" (contradicts the ledger)
    message: str = ""


@dataclass(frozen=True)
class FinalCheck:
    visitor: int
    prompt: str
    expected: str
    got: str
    own_edit: bool  # the visitor's own applied edit is on this prompt (else: the original answer is expected)

    @property
    def ok(self) -> bool:
        return self.expected == self.got


@dataclass
class EndpointStats:
    endpoint: str
    requests: int
    failed: int
    p50: float
    p95: float
    max: float


@dataclass
class SoakReport:
    settings: SoakSettings
    url: str
    seconds: float  # wall time of the visitors' loops, final checks included
    records: list[RequestRecord]
    final_checks: list[FinalCheck]
    rss_samples: list[tuple[float, int]]  # (seconds after start, bytes)
    rss_start: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    cycles: list[int] = field(default_factory=list)  # edits per visitor

    @property
    def failures(self) -> list[RequestRecord]:
        return [record for record in self.records if record.outcome in ("failed", "wrong")]

    @property
    def mismatches(self) -> list[FinalCheck]:
        return [check for check in self.final_checks if not check.ok]

    @property
    def passed(self) -> bool:
        return not self.failures and not self.mismatches and bool(self.final_checks)

    @property
    def rss_peak(self) -> int:
        return max([self.rss_start, *(rss for _, rss in self.rss_samples)])

    @property
    def rss_growth(self) -> int:
        return self.rss_peak - self.rss_start

    @property
    def rss_late_growth(self) -> int:
        """Peak RSS of the run's second half minus that of its first half (a leak keeps this positive)."""
        middle = self.seconds / 2
        first = [rss for at, rss in self.rss_samples if at < middle] or [self.rss_start]
        second = [rss for at, rss in self.rss_samples if at >= middle] or first
        return max(second) - max(first)

    def stats(self) -> list[EndpointStats]:
        rows = []
        for endpoint in dict.fromkeys(record.endpoint for record in self.records):
            chosen = [record for record in self.records if record.endpoint == endpoint]
            seconds = np.array([record.seconds for record in chosen])
            failed = sum(record.outcome in ("failed", "wrong") for record in chosen)
            rows.append(EndpointStats(endpoint, len(chosen), failed, float(np.percentile(seconds, 50)),
                                      float(np.percentile(seconds, 95)), float(seconds.max())))
        return rows

    def to_dict(self) -> dict:
        return {
            "settings": asdict(self.settings), "url": self.url, "seconds": self.seconds,
            "records": [asdict(record) for record in self.records],
            "final_checks": [asdict(check) | {"ok": check.ok} for check in self.final_checks],
            "rss_samples": self.rss_samples, "rss_start": self.rss_start, "rss_peak": self.rss_peak,
            "rss_late_growth": self.rss_late_growth,
            "load_before": self.load_before, "load_after": self.load_after, "cycles": self.cycles,
            "stats": [asdict(row) for row in self.stats()], "passed": self.passed,
        }


def format_report(report: SoakReport) -> str:
    """The table: latency per endpoint, requests served, failures, RSS and load."""
    settings = report.settings
    lines = [
        f"{'endpoint':<16}{'requests':>9}{'failed':>8}{'p50 s':>9}{'p95 s':>9}{'max s':>9}",
        *(f"{row.endpoint:<16}{row.requests:>9}{row.failed:>8}{row.p50:>9.2f}{row.p95:>9.2f}{row.max:>9.2f}"
          for row in report.stats()),
        f"{len(report.records)} requests served to {settings.visitors} visitors in {report.seconds:.1f} s "
        f"({len(report.records) / max(report.seconds, 1e-9):.2f}/s; loop {settings.seconds:g} s, then each visitor "
        f"settles and checks); edits per visitor: {report.cycles}",
        f"failed requests: {len(report.failures)}; final predictions matching the visitor's own ledger: "
        f"{len(report.final_checks) - len(report.mismatches)}/{len(report.final_checks)}",
        f"server RSS: {report.rss_start / 2**20:,.0f} MiB at the start, peak {report.rss_peak / 2**20:,.0f} MiB "
        f"(+{report.rss_growth / 2**20:,.0f} MiB; second half's peak {report.rss_late_growth / 2**20:+,.0f} MiB over the "
        f"first half's), {len(report.rss_samples)} samples",
        "load average (1/5/15 min): before " + "/".join(f"{x:.1f}" for x in report.load_before)
        + ", after " + "/".join(f"{x:.1f}" for x in report.load_after) + f" on {os.cpu_count()} cores",
    ]
    lines += [f"FAILED {record.endpoint} (visitor {record.visitor}, at {record.started:.1f} s): {record.message}"
              for record in report.failures[:20]]
    lines += [f"MISMATCH visitor {check.visitor} on {check.prompt!r}: expected {check.expected!r}, got {check.got!r}"
              for check in report.mismatches]
    return "\n".join(lines)


# --- RSS ------------------------------------------------------------------------------------------


def process_rss(pid: int | str = "self") -> int:
    """Resident set size of a process in bytes (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler(threading.Thread):
    """Samples `read()` every `interval` seconds until stopped."""

    def __init__(self, read: Callable[[], int], interval: float, started: float):
        super().__init__(name="soak-rss", daemon=True)
        self.read, self.interval, self.started = read, interval, started
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.samples.append((time.monotonic() - self.started, self.read()))
            except (OSError, RuntimeError):  # the process is gone: the requests will say so
                pass
            self.halt.wait(self.interval)


# --- visitors -------------------------------------------------------------------------------------


class Visitor(threading.Thread):
    """One simulated visitor: its own session, its own fact, its own ledger of applied batches."""

    def __init__(self, number: int, api: LocusApi, fact: Fact, originals: dict[str, str], run: _Run):
        super().__init__(name=f"soak-visitor-{number}", daemon=True)
        self.number, self.api, self.fact, self.originals, self.soak = number, api, fact, originals, run
        self.keeps_edit = number % 2 == 1  # how it ends: odd visitors with their edit applied
        self.applied: dict[str, Fact] = {}  # its ledger: batch id -> fact
        self.edits = 0
        self.broken = False  # a request failed: its ledger is no longer known

    def request(self, endpoint: str, send: Callable[[], Any], check: Callable[[Any], str] | None = None) -> Any:
        """Send one request, record it; `check` returns "" or what contradicts the ledger."""
        started = time.monotonic()
        try:
            result = send()
        except Exception as error:  # every failure is recorded, whatever its kind
            self.soak.record(self.number, endpoint, started, "failed", f"{type(error).__name__}: {error}")
            self.broken = True
            return None
        problem = check(result) if check else ""
        self.soak.record(self.number, endpoint, started, "wrong" if problem else "ok", problem)
        return result

    def has_edit_on(self, prompt: str) -> bool:
        return any(fact.prompt == prompt for fact in self.applied.values())

    def expected_top(self, prompt: str) -> str:
        """The edited side's top token: this visitor's own new object where its edit applies, else the original."""
        for fact in self.applied.values():
            if fact.prompt == prompt:
                return " " + fact.new_object
        return self.originals[prompt]

    def check_prediction(self, prompt: str, prediction: Prediction) -> str:
        problems = []
        if prediction.before_top != self.originals[prompt]:
            problems.append(f"original side says {prediction.before_top!r}, not {self.originals[prompt]!r}")
        if prediction.edited != bool(self.applied):
            problems.append(f"server says edited={prediction.edited} but this visitor has {len(self.applied)} batch(es)")
        if not self.applied and not prediction.same:
            problems.append("no edits, yet the edited side differs from the original")
        if prediction.after_top != self.expected_top(prompt):
            problems.append(f"edited side says {prediction.after_top!r}, not {self.expected_top(prompt)!r}")
        return "; ".join(problems)

    def check_preview(self, preview: Preview) -> str:
        problems = []
        if preview.answer != self.originals[self.fact.prompt]:
            problems.append(f"preview follows {preview.answer!r}, not {self.originals[self.fact.prompt]!r}")
        if not preview.approximate:
            problems.append("the preview is not marked approximate")
        if set(preview.kinds) != set(self.api.settings.preview_kinds):
            problems.append(f"scores for {preview.kinds}, asked for {self.api.settings.preview_kinds}")
        return "; ".join(problems)

    def predict(self) -> None:
        prompt = self.fact.prompt
        self.request("predict", lambda: self.api.predict(prompt), lambda result: self.check_prediction(prompt, result))

    def preview(self) -> None:
        self.request("preview", lambda: self.api.preview(self.fact), self.check_preview)

    def bad_input(self) -> None:
        started = time.monotonic()
        try:
            message = self.api.refused_prediction("   ")
        except Exception as error:  # recorded as a failed request
            self.soak.record(self.number, "bad input", started, "failed", f"{type(error).__name__}: {error}")
            self.broken = True
            return
        if message is None:
            self.soak.record(self.number, "bad input", started, "wrong", "an empty prompt was answered, not refused")
        else:
            self.soak.record(self.number, "bad input", started, "refused", message[:200])

    def edit(self) -> None:
        def check(outcome: EditOutcome) -> str:
            self.applied[outcome.batch_id] = self.fact
            self.edits += 1
            if set(outcome.history) != set(self.applied):
                return f"history shows {outcome.history}, this visitor applied {tuple(self.applied)}"
            return ""

        self.request("edit", lambda: self.api.edit(self.fact), check)

    def undo(self) -> None:
        batch_id = next(reversed(self.applied))

        def check(remaining: tuple[str, ...]) -> str:
            del self.applied[batch_id]
            return "" if set(remaining) == set(self.applied) else f"{remaining} remain, expected {tuple(self.applied)}"

        self.request("undo", lambda: self.api.undo(batch_id), check)

    def settled(self) -> bool:
        return bool(self.applied) == self.keeps_edit

    def run(self) -> None:
        while not self.broken:
            if self.soak.past_deadline() and self.settled():
                break
            if self.applied:
                self.undo()
                continue
            if not self.soak.past_deadline():
                self.predict()
                self.preview()
                self.bad_input()
            if self.broken:
                break
            self.edit()
            if not self.broken:
                self.predict()  # the edit shows on its own prompt

    def final_checks(self, prompts: Sequence[str]) -> list[FinalCheck]:
        checks = []
        for prompt in prompts:
            started = time.monotonic()
            try:
                prediction = self.api.predict(prompt)
            except Exception as error:  # recorded as a failed request
                self.soak.record(self.number, "final predict", started, "failed", f"{type(error).__name__}: {error}")
                checks.append(FinalCheck(self.number, prompt, self.expected_top(prompt), f"(failed: {error})",
                                         self.has_edit_on(prompt)))
                continue
            problem = self.check_prediction(prompt, prediction)
            self.soak.record(self.number, "final predict", started, "wrong" if problem else "ok", problem)
            checks.append(FinalCheck(self.number, prompt, self.expected_top(prompt), prediction.after_top,
                                     self.has_edit_on(prompt)))
        return checks


class _Run:
    """Shared by the visitors of one soak: the clock and the request log."""

    def __init__(self, seconds: float):
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.records: list[RequestRecord] = []
        self.lock = threading.Lock()

    def past_deadline(self) -> bool:
        return time.monotonic() >= self.deadline

    def record(self, visitor: int, endpoint: str, started: float, outcome: str, message: str = "") -> None:
        now = time.monotonic()
        with self.lock:
            self.records.append(RequestRecord(visitor, endpoint, started - self.started, now - started, outcome, message))


def original_answers(url: str, settings: SoakSettings, facts: Sequence[Fact]) -> dict[str, str]:
    """The unedited model's top next token for each fact's prompt (a fresh session, no edits)."""
    api = LocusApi(url, settings)
    try:
        answers = {fact.prompt: api.predict(fact.prompt).before_top for fact in facts}
    finally:
        api.close()
    for fact in facts:
        if answers[fact.prompt].strip() == fact.new_object:
            raise ValueError(f"{fact.prompt!r} already answers {fact.new_object!r}: that edit would change nothing")
    return answers


def warm_up(url: str, settings: SoakSettings, fact: Fact = FACTS[0]) -> float:
    """A predict, a preview and an edit with its undo in a throw-away session; its seconds.

    The first edit of a fresh cache computes the covariance of R (about a minute on a CPU), and every
    first request allocates what later ones reuse: measured before the run, RSS growth is what the
    visitors add, not these one-time costs.
    """
    api = LocusApi(url, settings)
    try:
        started = time.monotonic()
        api.predict(fact.prompt)
        api.preview(fact)
        api.undo(api.edit(fact).batch_id)
        return time.monotonic() - started
    finally:
        api.close()


def run_soak(
    url: str,
    settings: SoakSettings,
    read_rss: Callable[[], int],
    facts: Sequence[Fact] = FACTS,
    log: Callable[[str], None] | None = None,
) -> SoakReport:
    """Run the visitors against the server at `url` for `settings.seconds`, then check their ledgers."""
    chosen = [facts[number % len(facts)] for number in range(settings.visitors)]
    prompts = list(dict.fromkeys(fact.prompt for fact in chosen))
    originals = original_answers(url, settings, list(dict.fromkeys(chosen)))
    apis = [LocusApi(url, settings) for _ in chosen]  # sessions first: their set-up is not part of the run
    load_before = os.getloadavg()
    rss_start = read_rss()
    run = _Run(settings.seconds)
    sampler = RssSampler(read_rss, settings.rss_interval, run.started)
    sampler.start()
    visitors = [Visitor(number, api, fact, originals, run) for number, (api, fact) in enumerate(zip(apis, chosen))]
    try:
        for visitor in visitors:
            visitor.start()
        while any(visitor.is_alive() for visitor in visitors):
            for visitor in visitors:
                visitor.join(timeout=30)
            if log and any(visitor.is_alive() for visitor in visitors):
                log(f"  {time.monotonic() - run.started:6.0f} s: {len(run.records)} requests, "
                    f"{sum(record.outcome in ('failed', 'wrong') for record in run.records)} failed, "
                    f"RSS {sampler.samples[-1][1] / 2**20 if sampler.samples else 0:,.0f} MiB")
        checks = [check for visitor in visitors for check in visitor.final_checks(prompts)]
        seconds = time.monotonic() - run.started
        for visitor, api in zip(visitors, apis):
            if visitor.applied:
                visitor.request("reset", api.reset)  # leave nothing behind in the server's sessions
    finally:
        sampler.halt.set()
        sampler.join()
        for api in apis:
            api.close()
    return SoakReport(
        settings=settings, url=url, seconds=seconds, records=list(run.records), final_checks=checks,
        rss_samples=sampler.samples, rss_start=rss_start, load_before=load_before, load_after=os.getloadavg(),
        cycles=[visitor.edits for visitor in visitors],
    )
