"""docs/METHODS.md's worked example, added as the page says (one file, one registry line) and used as users use it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import locus
from editor import cli as editor_cli
from editor.edits.ledger import EditLedger
from editor.methods import registry
from tests.test_editor_support import TEST_TOKENS

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "METHODS.md").read_text()
EXAMPLE = ROOT / "examples" / "methods" / "scaled_memit.py"
REQUEST = locus.EditRequest("Eiffel Tower", "{} is located in the city of", "Rome")
FAST = dict(cov_tokens=TEST_TOKENS, steps=3, progress=False)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown page."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def documented_registry() -> dict[str, str]:
    """The METHODS dict as the page writes it (the real registry plus the example's line)."""
    block = next(block for block in python_blocks(PAGE) if block.startswith("METHODS: dict[str, str] = {"))
    return ast.literal_eval(block.partition("=")[2].strip())


@pytest.fixture
def registered(monkeypatch):
    """The example's registry line added, as a contributor adds it to editor/methods/registry.py."""
    documented = documented_registry()
    added = {name: target for name, target in documented.items() if name not in registry.METHODS}
    assert list(added) == ["scaled-memit"]
    for name, target in added.items():
        monkeypatch.setitem(registry.METHODS, name, target)
    monkeypatch.setattr(registry, "METHOD_NAMES", tuple(registry.METHODS))
    return "scaled-memit"


def test_the_page_quotes_the_example_file_and_the_real_registry():
    assert EXAMPLE.read_text() in python_blocks(PAGE)
    documented = documented_registry()
    assert {name: documented[name] for name in registry.METHOD_NAMES} == registry.METHODS


def test_the_method_edits_through_the_users_entry_points(registered, tiny, tmp_path):
    lm = tiny("llama")
    method = registry.method_for(lm.layout, registered, **{key: FAST[key] for key in ("cov_tokens", "steps")})
    assert type(method).__name__ == "ScaledMemit" and method.describe() == "lambda 1500, scale 0.5"
    layers = method.layers
    with locus.edit(lm, [REQUEST], method="memit", **FAST) as memit:
        plain = {layer: memit.batch.deltas[layer].clone() for layer in layers}
    with locus.edit(lm, [REQUEST], method=registered, scale=1.0, **FAST) as same:  # scale 1 is MEMIT, bit for bit
        assert all(torch.equal(same.batch.deltas[layer], plain[layer]) for layer in layers)
    with locus.edit(lm, [REQUEST], method=registered, **FAST) as half:
        first, last = layers[0], layers[-1]
        assert torch.equal(half.batch.deltas[first], plain[first] * 0.5)  # the first layer writes half its share
        assert not torch.allclose(half.batch.deltas[last], plain[last] * 0.5)  # later layers take up the rest
        saved = EditLedger.load(half.save(tmp_path / "half.safetensors"))
    assert saved.batches[0].method == registered
    assert registry.method_from_dict(saved.batches[0].settings) == half.method
    with pytest.raises(locus.InputError, match="The scale must be a finite number above 0"):
        locus.edit(lm, [REQUEST], method=registered, scale=0.0, **FAST)


def test_the_method_warns_about_an_overshoot(registered, tiny):
    lm = tiny("llama")
    with locus.edit(lm, [REQUEST], method=registered, scale=2.0, **FAST) as double:
        assert any("writes more than the change" in warning for warning in double.batch.warnings)


def test_python_m_editor_methods_lists_it_with_its_setting(registered, capsys):
    assert editor_cli.main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "scaled-memit: Scaled MEMIT (MEMIT's update times a factor)" in listed
    assert "    scale = 0.5" in listed.split("scaled-memit:")[1]
