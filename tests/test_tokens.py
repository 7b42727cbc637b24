"""Subject token ranges from character offsets, target tokens, chat templates (real SmolLM2 tokenizer)."""

from __future__ import annotations

import pytest
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from core.errors import InputError
from core.tokens import encode_prompt, find_subject, target_token_ids


def _subject_text(encoded, subject, occurrence=0):
    b, e = encoded.subject_range(subject, occurrence)
    return "".join(encoded.tokens[b:e]), (b, e)


def test_multi_token_subject_with_leading_space(tokenizer):
    encoded = encode_prompt(tokenizer, "The Eiffel Tower is located in the city of")
    text, (b, e) = _subject_text(encoded, "Eiffel Tower")
    assert text.strip() == "Eiffel Tower"
    assert b == 1 and e - b >= 2  # "The" is token 0; the subject spans several tokens
    assert "Eiffel Tower" not in "".join(encoded.tokens[b + 1 : e])


def test_subject_at_the_start(tokenizer):
    encoded = encode_prompt(tokenizer, "Danielle Darrieux's mother tongue is")
    text, (b, e) = _subject_text(encoded, "Danielle Darrieux")
    assert b == 0 and text == "Danielle Darrieux"


def test_subject_that_occurs_twice(tokenizer):
    encoded = encode_prompt(tokenizer, "Paris is lovely. People who visit Paris speak")
    first = encoded.subject_range("Paris", 0)
    second = encoded.subject_range("Paris", 1)
    assert first == (0, 1)
    assert second[0] > first[0] and encoded.tokens[second[0]].strip() == "Paris"
    with pytest.raises(InputError, match="occurs 2 time"):
        encoded.subject_range("Paris", 2)


def test_subject_absent_shows_prompt_and_near_matches(tokenizer):
    encoded = encode_prompt(tokenizer, "The Eiffel Tower is located in the city of")
    with pytest.raises(InputError) as caught:
        encoded.subject_range("Eifel Tower")
    message = str(caught.value)
    assert "The Eiffel Tower is located in the city of" in message and "'Eiffel Tower'" in message


def test_bos_token_is_skipped():
    from core.embedded import ensure_embedded_cache

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(ensure_embedded_cache()))
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    encoded = encode_prompt(tokenizer, "Eiffel Tower is in")
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    text, (b, e) = _subject_text(encoded, "Eiffel Tower")
    assert b == 1 and text == "Eiffel Tower"


def test_chat_template_keeps_the_subject_range(tokenizer):
    encoded = encode_prompt(tokenizer, "The Eiffel Tower is located in the city of", chat=True)
    assert encoded.chat and encoded.text != encoded.prompt
    text, (b, e) = _subject_text(encoded, "Eiffel Tower")
    assert text.strip() == "Eiffel Tower"
    assert b > 3  # the template's special tokens come first


def test_empty_and_too_long_prompts(tokenizer):
    with pytest.raises(InputError, match="empty"):
        encode_prompt(tokenizer, "   ")
    with pytest.raises(InputError, match="too long"):
        encode_prompt(tokenizer, "word " * 50, max_tokens=10)
    with pytest.raises(InputError, match="subject is empty"):
        find_subject("a prompt", "")


def test_target_tokens_get_the_leading_space(tokenizer):
    paris = target_token_ids(tokenizer, "Paris", prompt="The Eiffel Tower is located in the city of")
    assert tokenizer.decode(paris) == " Paris" and len(paris) == 1
    assert target_token_ids(tokenizer, " Paris") == paris
    assert target_token_ids(tokenizer, "Paris") == paris
    multi = target_token_ids(tokenizer, "Ursa Minor", prompt="Polaris is in the constellation")
    assert tokenizer.decode(multi) == " Ursa Minor"
    with pytest.raises(InputError, match="empty"):
        target_token_ids(tokenizer, " ")
