"""The editor's layer text: parsed with every bound checked before a range is built, and written back."""

from __future__ import annotations

import pytest

from core.errors import InputError
from editor.layers import MAX_LAYERS_TEXT, layers_text, parse_layers


def test_layer_text_is_parsed_and_checked():
    assert parse_layers("2-6", 30) == (2, 3, 4, 5, 6)
    assert parse_layers("3, 5,4", 30) == (3, 4, 5)
    assert parse_layers("2..4 7", 30) == (2, 3, 4, 7)
    assert parse_layers("6 - 2", 30) == (2, 3, 4, 5, 6)
    with pytest.raises(InputError, match="0..29"):
        parse_layers("28-31", 30)
    with pytest.raises(InputError, match="not understood"):
        parse_layers("two to six", 30)
    with pytest.raises(InputError, match="No layers"):
        parse_layers("  ", 30)


def test_huge_ranges_are_refused_without_building_them():
    with pytest.raises(InputError, match="0..29"):
        parse_layers("0-99999999999", 30)  # twelve digits: refused before any range is built
    with pytest.raises(InputError, match="0..29"):
        parse_layers("0-999999", 30)
    with pytest.raises(InputError, match="layers stop below"):
        parse_layers("0-999999")  # before the model is known
    with pytest.raises(InputError, match="characters"):
        parse_layers("1," * MAX_LAYERS_TEXT, 30)


def test_layers_are_written_back_as_text():
    assert layers_text([2, 3, 4, 5, 6]) == "2-6"
    assert layers_text((6, 2, 4)) == "2,4,6"
    assert layers_text([7]) == "7" and layers_text([]) == ""
    assert parse_layers(layers_text([1, 2, 3, 9]), 30) == (1, 2, 3, 9)
