"""The console's catalogs and language choice (pure)."""

from __future__ import annotations

from master_station.console.i18n import EN, ZH, choose_language, translator


def test_both_catalogs_have_the_same_keys() -> None:
    assert set(EN) == set(ZH)


def test_the_cookie_wins_then_accept_language_then_english() -> None:
    assert choose_language("zh-CN", "en-US,en;q=0.9") == "zh-CN"
    assert choose_language(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert choose_language(None, "fr-FR,en;q=0.5,zh;q=0.4") == "en"
    assert choose_language(None, "de-DE") == "en"
    assert choose_language("xx", None) == "en"


def test_placeholders_are_filled() -> None:
    t = translator("zh-CN")
    assert t("login.limited", seconds=30) == "登录失败次数过多，请 30 秒后再试。"  # noqa: RUF001
    assert translator("en")("no.such.key") == "no.such.key"
