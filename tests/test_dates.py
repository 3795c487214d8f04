"""The `dates` task: exact formats, correct weekdays, determinism, and that every source has one answer."""

from __future__ import annotations

import datetime
import re
from collections import Counter

import pytest

from aiayn.data.dates import FORMATS, date_pairs, format_applies, format_date, task_pairs

NOV22 = datetime.date(2026, 11, 22)  # a Sunday


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("d_month_y", "22 November 2026"),
        ("month_d_y", "November 22, 2026"),
        ("mon_d_y", "Nov 22, 2026"),
        ("d_mon_y", "22 Nov 2026"),
        ("us_yy", "11/22/26"),
        ("us", "11/22/2026"),
        ("eu_dots", "22.11.2026"),
        ("ymd_slash", "2026/11/22"),
        ("zh", "2026年11月22日"),
        ("zh_weekday", "2026年11月22日 星期日"),
        ("zh_digits", "二〇二六年十一月二十二日"),
        ("weekday_d_month_y", "Sunday, 22 November 2026"),
        ("weekday_ordinal_words", "Sunday, the twenty-second of November 2026"),
        ("the_ordinal_of_month", "the 22nd of November, 2026"),
        ("mon_dot_ordinal", "Nov. 22nd 2026"),
        ("d_mon_y_dashes", "22-Nov-2026"),
        ("d_month_y_lower", "22 november 2026"),
        ("month_d_y_upper", "NOVEMBER 22, 2026"),
        ("mon_d_y_lower", "nov 22, 2026"),
        ("d_mon_y_dashes_upper", "22-NOV-2026"),
    ],
)
def test_format_known_date(fmt: str, expected: str) -> None:
    assert format_date(NOV22, fmt) == expected


def test_padding_and_small_numbers() -> None:
    jan5 = datetime.date(2026, 1, 5)
    assert format_date(jan5, "us_yy") == "1/5/26"
    assert format_date(jan5, "us_yy_padded") == "01/05/26"
    assert format_date(jan5, "us_padded") == "01/05/2026"
    assert format_date(jan5, "eu_dots") == "5.1.2026"
    assert format_date(jan5, "eu_dots_padded") == "05.01.2026"
    assert format_date(jan5, "zh") == "2026年1月5日"
    assert format_date(datetime.date(2000, 10, 10), "zh_digits") == "二〇〇〇年十月十日"
    assert format_date(datetime.date(1999, 12, 31), "zh_digits") == "一九九九年十二月三十一日"
    assert format_date(datetime.date(2011, 5, 20), "zh_digits") == "二〇一一年五月二十日"
    assert format_date(datetime.date(2003, 5, 3), "mon_dot_ordinal") == "May 3rd 2003"  # "May" takes no dot
    ordinals = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th", 21: "21st", 23: "23rd"}
    for day, text in ordinals.items():
        assert format_date(datetime.date(2026, 3, day), "the_ordinal_of_month") == f"the {text} of March, 2026"
    words = {1: "first", 12: "twelfth", 20: "twentieth", 21: "twenty-first", 30: "thirtieth", 31: "thirty-first"}
    for day, text in words.items():
        assert f"the {text} of " in format_date(datetime.date(2026, 3, day), "weekday_ordinal_words")


def test_weekdays_are_correct() -> None:
    assert format_date(NOV22, "weekday_d_month_y").startswith("Sunday,")
    assert format_date(datetime.date(2000, 1, 1), "weekday_d_month_y") == "Saturday, 1 January 2000"
    assert format_date(datetime.date(1969, 7, 20), "weekday_d_month_y") == "Sunday, 20 July 1969"
    assert format_date(datetime.date(2024, 2, 29), "zh_weekday") == "2024年2月29日 星期四"
    assert format_date(datetime.date(2026, 11, 23), "zh_weekday") == "2026年11月23日 星期一"


def test_two_digit_years_only_2000_to_2049() -> None:
    assert not format_applies(datetime.date(1999, 12, 31), "us_yy")
    assert format_applies(datetime.date(2049, 12, 31), "us_yy_padded")
    assert format_applies(datetime.date(1950, 1, 1), "us")
    with pytest.raises(ValueError, match="two-digit"):
        format_date(datetime.date(1987, 6, 5), "us_yy")
    with pytest.raises(ValueError, match="unknown date format"):
        format_date(NOV22, "nope")
    pairs = date_pairs(5000, seed=3)
    for source, target in pairs:
        if re.fullmatch(r"\d{1,2}/\d{1,2}/\d{2}", source):
            assert target.startswith("20") and target[2:4] == source[-2:]


def test_deterministic_by_seed() -> None:
    assert date_pairs(200, seed=1) == date_pairs(200, seed=1)
    assert date_pairs(200, seed=1) != date_pairs(200, seed=2)
    assert task_pairs("dates", 50, 7) == date_pairs(50, 7)
    assert task_pairs("reverse", 50, 7) == task_pairs("reverse", 50, 7)
    assert task_pairs("copy", 50, 7) != task_pairs("copy", 50, 8)


def test_date_range_and_format_coverage() -> None:
    pairs = date_pairs(20_000, seed=0)
    years = [int(t[:4]) for _, t in pairs]
    assert min(years) == 1950 and max(years) == 2049
    # Every format occurs: each is recognisable by writing the target date again in it.
    used = Counter()
    for source, target in pairs[:3000]:
        date = datetime.date.fromisoformat(target)
        used.update(f for f in FORMATS if format_applies(date, f) and format_date(date, f) == source)
    assert set(used) == set(FORMATS)
    narrow = date_pairs(300, seed=0, start_year=2026, end_year=2026)
    assert {t[:4] for _, t in narrow} == {"2026"}
    with pytest.raises(ValueError, match="start_year"):
        date_pairs(3, 0, start_year=2030, end_year=2020)


# --- an independent parser: every source must read back as its target ------------------------------------------

_MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_ZH = {c: i for i, c in enumerate("〇一二三四五六七八九")}
_ORDINAL_WORDS = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
    "twentieth",
]


def _ordinal_word_value(word: str) -> int:
    if word in _ORDINAL_WORDS:
        return _ORDINAL_WORDS.index(word) + 1
    if word == "thirtieth":
        return 30
    tens, unit = word.split("-")
    return {"twenty": 20, "thirty": 30}[tens] + _ORDINAL_WORDS.index(unit) + 1


def _zh_value(text: str) -> int:
    if "十" not in text:
        return _ZH[text]
    tens, _, units = text.partition("十")
    return (_ZH[tens] if tens else 1) * 10 + (_ZH[units] if units else 0)


def parse(source: str) -> datetime.date:
    """Read a generated date back, without using the generator's code; checks weekdays and suffixes it meets."""
    if m := re.fullmatch(r"([〇一二三四五六七八九]{4})年(\S+)月(\S+)日", source):
        year = int("".join(str(_ZH[c]) for c in m[1]))
        return datetime.date(year, _zh_value(m[2]), _zh_value(m[3]))
    if m := re.fullmatch(r"(\d{4})年(\d{1,2})月(\d{1,2})日(?: 星期(.))?", source):
        date = datetime.date(int(m[1]), int(m[2]), int(m[3]))
        assert m[4] is None or "一二三四五六日"[date.weekday()] == m[4], source
        return date
    if m := re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})", source):
        year = int(m[3]) + (2000 if len(m[3]) == 2 else 0)
        return datetime.date(year, int(m[1]), int(m[2]))
    if m := re.fullmatch(r"(\d{1,2})\.(\d{1,2})\.(\d{4})", source):
        return datetime.date(int(m[3]), int(m[2]), int(m[1]))
    if m := re.fullmatch(r"(\d{4})/(\d{2})/(\d{2})", source):
        return datetime.date(int(m[1]), int(m[2]), int(m[3]))
    if m := re.fullmatch(r"(\d{2})-([A-Za-z]{3})-(\d{4})", source):
        return datetime.date(int(m[3]), [x[:3] for x in _MONTHS].index(m[2].lower()) + 1, int(m[1]))
    # English words: [weekday,] [the] day [of] month[,] year, in any order of day and month.
    words = [w for w in source.lower().replace(",", " ").split() if w not in ("the", "of")]
    weekday = words.pop(0) if words[0] in _DAYS else None
    assert len(words) == 3 and re.fullmatch(r"\d{4}", words[2]), source
    year = int(words[2])
    names = {name: i + 1 for i, name in enumerate(_MONTHS)} | {name[:3]: i + 1 for i, name in enumerate(_MONTHS)}
    month_first = words[0].rstrip(".") in names
    month_word, day_word = (words[0], words[1]) if month_first else (words[1], words[0])
    month = names[month_word.rstrip(".")]
    if m := re.fullmatch(r"(\d{1,2})(st|nd|rd|th)?", day_word):
        day = int(m[1])
        if m[2]:
            want = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
            assert m[2] == want, source
    else:
        day = _ordinal_word_value(day_word)
    date = datetime.date(year, month, day)
    assert weekday is None or _DAYS[date.weekday()] == weekday, source
    return date


def test_every_source_parses_back_to_its_target() -> None:
    pairs = date_pairs(20_000, seed=123)
    for source, target in pairs:
        assert parse(source).isoformat() == target, source


def test_no_source_has_two_targets() -> None:
    targets: dict[str, str] = {}
    for source, target in date_pairs(20_000, seed=5) + date_pairs(20_000, seed=6):
        assert targets.setdefault(source, target) == target, source


def test_copy_and_reverse() -> None:
    for task in ("copy", "reverse"):
        pairs = task_pairs(task, 500, seed=0)
        assert len(pairs) == 500
        lengths = set()
        for source, target in pairs:
            letters = source.split(" ")
            lengths.add(len(letters))
            assert all(len(c) == 1 and c.islower() and c.isascii() for c in letters)
            assert target == (source if task == "copy" else " ".join(reversed(letters)))
        assert lengths == set(range(3, 9))
    assert task_pairs("copy", 0, 0) == []


def test_bad_task_name() -> None:
    with pytest.raises(ValueError, match=r"'translate'.*'dates' \| 'copy' \| 'reverse'"):
        task_pairs("translate", 10, 0)
    with pytest.raises(ValueError, match="n must be"):
        task_pairs("copy", -1, 0)
