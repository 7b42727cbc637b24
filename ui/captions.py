"""Short plain-words texts under each plot: "what am I looking at" (read aloud in a lecture)."""

from __future__ import annotations

TRACE_INTRO = (
    "**Causal tracing** asks *where* the model keeps a fact. We blur the subject's words with noise, "
    "so the model forgets the answer, then copy back one piece of the clean run at a time. "
    "Where copying back one piece brings the answer back, that piece carries the fact."
)

HEATMAP = {
    "hidden": (
        "**Whole hidden state** (purple). Each square is one word (row) at one layer (column). "
        "Dark = restoring the model's full internal state there brings the answer back. "
        "Expect dark squares at the subject's words in early layers and at the last word in late layers."
    ),
    "mlp": (
        "**MLP layers** (green), restored over a window of layers. Dark squares at the subject's "
        "words in early-to-middle layers are where facts are recalled: this is where MEMIT edits."
    ),
    "attn": (
        "**Attention layers** (red), restored over a window of layers. Attention matters late, at the last "
        "word: it moves the recalled fact from the subject to where the answer is written."
    ),
}

HEADS_HEATMAP = (
    "**Single attention heads** (orange; choose *single attention heads* under Advanced). Each square is one "
    "head (row) at one layer (column), restored on its own at the last word (or at every word from the subject "
    "on). A dark square is a head that alone carries enough of the fact to bring the answer back."
)

TRACE_MODES = (
    "*How the subject is corrupted*: ROME blurs its words with noise; *replace* swaps in another subject with "
    "as many tokens (e.g. Colosseum for Eiffel Tower), which keeps the input natural; *resample* draws a different "
    "known subject per sample. *Score*: probability of the answer (ROME), or the answer's logit minus the "
    "logit of what the corrupted model says instead (logit difference), which shows small effects better."
)

PREVIEW_NOTE = (
    "*Approximate preview* (attribution patching: a one-step estimate from a single backward pass). "
    "The exact values replace it cell by cell as they are computed."
)

AVERAGES = (
    "**Averages over many facts.** Each line is the average indirect effect (how much restoring that "
    "piece brings the answer back) for one kind of word, per layer; the band is the 95% interval. "
    "One fact can mislead; the average shows the pattern the model uses for facts in general. "
    "Computed on the original model (your edits are not applied here) and cached."
)

CHOOSE_R = (
    "**Which layers to edit.** The curve shows how much the MLP at each layer (restored over a window) "
    "brings back the answer at the *last subject word*. MEMIT spreads the edit over a range R of "
    "consecutive layers where this curve is high. Drag the two sliders or press *Recommend*."
)

EDIT = (
    "**Rewriting facts.** Each row asks the model to believe something new: in the prompt, `{}` stands for "
    "the subject. MEMIT computes, for all rows at once, small changes to the MLP weights of the layers R. "
    "Your edits apply only to your browser session: other visitors still see the original model."
)

DIAGNOSTICS = (
    "**Diagnostics.** Per request: the probability of the new object after optimisation and how the loss fell. "
    "Per layer: how large the change is compared with the weights. With AlphaEdit, also how null its \"null space\" "
    "is: the share of ordinary text's key energy lying in it (near 0: text is left alone) and of the edited keys "
    "(near 0: the edit cannot be written)."
)

TEST_COMPARE = (
    "**Before and after.** Left: the original model. Right: the same model with your edits. "
    "Bars are the most likely next words; below is what the model writes when it always picks the top word."
)

TEST_CHECKS = (
    "**Did the edit work, and only there?** *Rewrite*: the edited prompt itself. *Paraphrase*: other wordings "
    "of the same fact (should also change). *Neighborhood*: other subjects with the same relation "
    "(should NOT change). A check passes when the right object is more likely than the other one."
)

TEST_RETRACE = (
    "**Trace after editing minus trace before.** Each square shows how the restored probability of the "
    "answer changed because of your edits (blue = lower, red = higher). Edits change the MLPs of the "
    "layers R, so differences usually start there."
)

MODEL_PANEL = (
    "One model is in memory and shared by everyone using this page. Your edits are yours alone: each "
    "browser session sees the original model plus only its own edits, and work is queued one job at a time."
)
