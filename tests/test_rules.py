"""Rule rewards: each rule's range and meaning, unicode text (CJK, emoji, accents), config errors."""

from __future__ import annotations

import pytest

from rewardlab.errors import RewardlabError
from reward_models.rules import (
    RULES, Format, Keywords, Length, Regex, Repetition, make_rule, text_tokens,
)

P = [{"role": "user", "content": "question"}]


def test_registry_names_every_rule():
    assert {"length", "regex", "format", "repetition", "keywords"} <= set(RULES)
    assert isinstance(make_rule("length", {"max": 10}), Length)


def test_make_rule_errors_list_valid_choices():
    with pytest.raises(RewardlabError, match="unknown rule 'lenght'.*length"):
        make_rule("lenght", {})
    with pytest.raises(RewardlabError, match="unknown parameter.*maximum.*valid: min, max, unit, shape, floor"):
        make_rule("length", {"maximum": 3})
    with pytest.raises(RewardlabError, match="format.*kind"):
        make_rule("format", {})


# ---- words ---------------------------------------------------------------------------------


def test_text_tokens_are_unicode_aware():
    assert text_tokens("Café, naïve!") == ["café", "naïve"]
    assert text_tokens("cafe\u0301") == ["café"]  # combining accent == precomposed (NFC)
    assert text_tokens("我爱北京") == ["我", "爱", "北", "京"]
    assert text_tokens("ひらがなテスト") == list("ひらがなテスト")
    assert text_tokens("ok 😀😀 👍") == ["ok", "😀", "😀", "👍"]
    assert text_tokens("...!?  — ,") == []


# ---- length --------------------------------------------------------------------------------


def test_length_zero_inside_range_linear_and_quadratic_outside():
    rule = Length(min=10, max=20)
    assert rule(P, "x" * 15) == 0.0
    assert rule(P, "x" * 10) == 0.0 and rule(P, "x" * 20) == 0.0
    assert rule(P, "x" * 5) == pytest.approx(-0.5)  # (10 - 5) / 10
    assert rule(P, "x" * 30) == pytest.approx(-0.5)  # (30 - 20) / 20
    assert Length(min=10, max=20, shape="quadratic")(P, "x" * 5) == pytest.approx(-0.25)
    assert rule(P, "x" * 200) == -1.0  # clipped at floor
    assert Length(max=20, floor=-5)(P, "x" * 200) == pytest.approx(-5.0)


def test_length_counts_unicode_characters_and_words():
    assert Length(max=4)(P, "😀😀😀😀") == 0.0  # 4 characters, not 16 bytes
    assert Length(max=4)(P, "e\u0301e\u0301e\u0301e\u0301") == 0.0  # NFC: 4 characters
    words = Length(min=3, max=5, unit="words")
    assert words(P, "我爱北京") == 0.0  # 4 CJK words
    assert words(P, "one, two.") == pytest.approx(-1 / 3)
    assert words(P, "un café très très bon ici") == pytest.approx(-0.2)  # 6 words


def test_length_config_errors():
    with pytest.raises(RewardlabError, match="min, max"):
        Length()
    with pytest.raises(RewardlabError, match="above max"):
        Length(min=5, max=2)
    with pytest.raises(RewardlabError, match="shape must be one of linear, quadratic"):
        Length(max=3, shape="cubic")
    with pytest.raises(RewardlabError, match="unit"):
        Length(max=3, unit="bytes")


# ---- regex ---------------------------------------------------------------------------------


def test_regex_must_and_must_not_with_weights():
    rule = Regex(must_match=[r"\d+"], must_not_match={"as an AI": 2.0, "sorry": 0.5}, ignore_case=True)
    assert rule(P, "The answer is 42.") == 0.0
    assert rule(P, "No number here.") == -1.0
    assert rule(P, "As an ai, 7") == -2.0
    assert rule(P, "SORRY, as an AI.") == -3.5


def test_regex_unicode_and_errors():
    assert Regex(must_match=[{"pattern": "北京", "weight": 3}])(P, "我爱北京") == 0.0
    assert Regex(must_match=[{"pattern": "北京", "weight": 3}])(P, "上海") == -3.0
    assert Regex(must_not_match=["café"])(P, "cafe\u0301") == -1.0  # text is NFC-normalized
    with pytest.raises(RewardlabError, match="invalid pattern '\\(unclosed'"):
        Regex(must_match=["(unclosed"])
    with pytest.raises(RewardlabError, match="needs must_match"):
        Regex()


# ---- format --------------------------------------------------------------------------------


def test_format_json_and_required_keys():
    assert Format("json")(P, ' {"a": 1} ') == 1.0
    assert Format("json")(P, "```json\n[1, 2]\n```") == 1.0
    assert Format("json")(P, "{'a': 1}") == 0.0
    keys = Format("json", keys=["name", "城市"])
    assert keys(P, '{"name": "Zoë", "城市": "北京"}') == 1.0
    assert keys(P, '{"name": "Zoë"}') == 0.5
    assert keys(P, "[1]") == 0.0


def test_format_punctuation_any_script():
    rule = Format("punctuation")
    for text in ("Done.", "Really?", "你好。", "本当ですか？", "Wait…", 'He said "hi."', "(see above.)"):
        assert rule(P, text) == 1.0, text
    for text in ("no end", "emoji 😀", "", "list:"):
        assert rule(P, text) == 0.0, text


def test_format_code_block():
    text = "Here:\n```python\nprint('hé')\n```\n"
    assert Format("code_block")(P, text) == 1.0
    assert Format("code_block", language="python")(P, text) == 1.0
    assert Format("code_block", language="rust")(P, text) == 0.0
    assert Format("code_block")(P, "print('x')") == 0.0


# ---- repetition ----------------------------------------------------------------------------


def test_repetition_ratio():
    rule = Repetition(n=2)
    assert rule(P, "a b c d e") == 0.0
    assert rule(P, "one") == 0.0  # shorter than n
    assert rule(P, "the the the the the") == pytest.approx(-0.75)  # 4 bigrams, 1 unique
    assert -1.0 <= Repetition()(P, "loop " * 200) <= -0.99


def test_repetition_unicode():
    assert Repetition(n=3)(P, "我爱你我爱你我爱你") == pytest.approx(3 / 7 - 1)  # 7 trigrams, 3 unique
    assert Repetition(n=2)(P, "😀😀😀😀") == pytest.approx(-2 / 3)
    assert Repetition(n=2)(P, "Café CAFÉ cafe\u0301") == pytest.approx(-0.5)  # case- and accent-form-insensitive
    assert Repetition(n=2)(P, "北京欢迎你") == 0.0
    with pytest.raises(RewardlabError, match="n must be >= 1"):
        Repetition(n=0)


# ---- keywords ------------------------------------------------------------------------------


def test_keywords_word_boundaries_and_case():
    rule = Keywords(reward=["cat", "New York"], penalize=["sorry"], bonus=1.0, penalty=2.0)
    assert rule(P, "A CAT in new  york") == 2.0  # case-insensitive, whitespace-tolerant phrase
    assert rule(P, "category concatenate") == 0.0  # whole words only
    assert rule(P, "Sorry, cat cat cat.") == -1.0  # each keyword counted once


def test_keywords_unicode():
    rule = Keywords(reward=["北京", "résumé", "😀"], penalize=["Ärger"])
    assert rule(P, "我爱北京天安门") == 1.0  # CJK: no spaces, no boundaries
    assert rule(P, "my RÉSUMÉ") == 1.0
    assert rule(P, "my resume") == 0.0  # accents matter
    assert rule(P, "my re\u0301sume\u0301") == 1.0  # decomposed accents match (NFC)
    assert rule(P, "great😀") == 1.0  # emoji edge needs no boundary
    assert rule(P, "kein ärger") == -1.0
    assert rule(P, "Ärgerlich") == 0.0
    with pytest.raises(RewardlabError, match="list of words"):
        Keywords(reward="cat")
    with pytest.raises(RewardlabError, match="needs reward"):
        Keywords()
