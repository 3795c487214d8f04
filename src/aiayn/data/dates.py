"""The built-in `dates` task, and text versions of `copy` / `reverse`; deterministic by seed (stdlib only).

`dates`: a date written one of the many ways people write it, in English or Chinese, is translated into ISO
"YYYY-MM-DD": "Sunday, the twenty-second of November 2026" -> "2026-11-22", "二〇二六年十一月二十二日" ->
"2026-11-22". Every source determines its target uniquely:
- slashes are always US month/day ("11/22/26"), dots are always European day.month ("22.11.2026"), and a
  year-first date with slashes is year/month/day ("2026/11/22");
- two-digit years are only written for dates in 2000-2049, so "26" always means 2026 (never 1926);
- weekday names are always the right ones for the date.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable

from aiayn.errors import ConfigError

__all__ = ["FORMATS", "date_pairs", "format_applies", "format_date"]


MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]  # date.weekday() order
ZH_WEEKDAYS = ["一", "二", "三", "四", "五", "六", "日"]  # 星期一 (Monday) .. 星期日 (Sunday)
ZH_DIGITS = "〇一二三四五六七八九"

_UNITS = [
    "", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]  # fmt: skip
_UNIT_ORDINALS = [
    "", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
    "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth",
    "nineteenth",
]  # fmt: skip
_TENS = {2: "twenty", 3: "thirty"}
_TENS_ORDINALS = {2: "twentieth", 3: "thirtieth"}
_SUFFIXES = {1: "st", 2: "nd", 3: "rd"}

TWO_DIGIT_YEARS = (2000, 2049)  # inclusive: the only years written with two digits


def _ordinal_suffix(day: int) -> str:
    """1st 2nd 3rd 4th ... 11th 12th 13th ... 21st 22nd 23rd ... 31st."""
    if 11 <= day % 100 <= 13:
        return f"{day}th"
    return f"{day}{_SUFFIXES.get(day % 10, 'th')}"


def _ordinal_words(day: int) -> str:
    """English ordinal words for 1..31: "first", "twenty-second", "thirtieth"."""
    if not 1 <= day <= 31:
        raise ConfigError(f"day={day} is not in 1..31")
    if day < 20:
        return _UNIT_ORDINALS[day]
    tens, units = divmod(day, 10)
    return _TENS_ORDINALS[tens] if units == 0 else f"{_TENS[tens]}-{_UNIT_ORDINALS[units]}"


def _zh_number(n: int) -> str:
    """Chinese numerals for 1..99 as written in dates: 五, 十, 十一, 二十, 二十二, 三十一."""
    tens, units = divmod(n, 10)
    if tens == 0:
        return ZH_DIGITS[units]
    head = "" if tens == 1 else ZH_DIGITS[tens]
    return head + "十" + ("" if units == 0 else ZH_DIGITS[units])


def _zh_year(year: int) -> str:
    """Year digit by digit, as Chinese dates write it: 2026 -> 二〇二六."""
    return "".join(ZH_DIGITS[int(d)] for d in str(year))


def _month(d: datetime.date) -> str:
    return MONTHS[d.month - 1]


def _mon(d: datetime.date) -> str:
    return MONTHS[d.month - 1][:3]


def _mon_dot(d: datetime.date) -> str:
    return "May" if d.month == 5 else _mon(d) + "."  # "May" is its own abbreviation and takes no dot


def _weekday(d: datetime.date) -> str:
    return WEEKDAYS[d.weekday()]


def _yy(d: datetime.date) -> str:
    if not TWO_DIGIT_YEARS[0] <= d.year <= TWO_DIGIT_YEARS[1]:
        raise ConfigError(f"two-digit years are only written for {TWO_DIGIT_YEARS[0]}-{TWO_DIGIT_YEARS[1]}, got {d}")
    return f"{d.year % 100:02d}"


# name -> formatter; the comment is the example for 2026-11-22 (a Sunday).
_FORMATTERS: dict[str, Callable[[datetime.date], str]] = {
    "d_month_y": lambda d: f"{d.day} {_month(d)} {d.year}",  # 22 November 2026
    "month_d_y": lambda d: f"{_month(d)} {d.day}, {d.year}",  # November 22, 2026
    "mon_d_y": lambda d: f"{_mon(d)} {d.day}, {d.year}",  # Nov 22, 2026
    "d_mon_y": lambda d: f"{d.day} {_mon(d)} {d.year}",  # 22 Nov 2026
    "us_yy": lambda d: f"{d.month}/{d.day}/{_yy(d)}",  # 11/22/26 (1/5/26)
    "us_yy_padded": lambda d: f"{d.month:02d}/{d.day:02d}/{_yy(d)}",  # 11/22/26 (01/05/26)
    "us": lambda d: f"{d.month}/{d.day}/{d.year}",  # 11/22/2026 (1/5/2026)
    "us_padded": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",  # 11/22/2026 (01/05/2026)
    "eu_dots": lambda d: f"{d.day}.{d.month}.{d.year}",  # 22.11.2026 (5.1.2026)
    "eu_dots_padded": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",  # 22.11.2026 (05.01.2026)
    "ymd_slash": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",  # 2026/11/22
    "zh": lambda d: f"{d.year}年{d.month}月{d.day}日",  # 2026年11月22日
    "zh_weekday": lambda d: f"{d.year}年{d.month}月{d.day}日 星期{ZH_WEEKDAYS[d.weekday()]}",  # 2026年11月22日 星期日
    # 二〇二六年十一月二十二日
    "zh_digits": lambda d: f"{_zh_year(d.year)}年{_zh_number(d.month)}月{_zh_number(d.day)}日",
    "weekday_d_month_y": lambda d: f"{_weekday(d)}, {d.day} {_month(d)} {d.year}",  # Sunday, 22 November 2026
    # Sunday, the twenty-second of November 2026
    "weekday_ordinal_words": lambda d: f"{_weekday(d)}, the {_ordinal_words(d.day)} of {_month(d)} {d.year}",
    # the 22nd of November, 2026
    "the_ordinal_of_month": lambda d: f"the {_ordinal_suffix(d.day)} of {_month(d)}, {d.year}",
    "mon_dot_ordinal": lambda d: f"{_mon_dot(d)} {_ordinal_suffix(d.day)} {d.year}",  # Nov. 22nd 2026
    "d_mon_y_dashes": lambda d: f"{d.day:02d}-{_mon(d)}-{d.year}",  # 22-Nov-2026 (05-Jan-2026)
    "d_month_y_lower": lambda d: f"{d.day} {_month(d).lower()} {d.year}",  # 22 november 2026
    "month_d_y_upper": lambda d: f"{_month(d).upper()} {d.day}, {d.year}",  # NOVEMBER 22, 2026
    "mon_d_y_lower": lambda d: f"{_mon(d).lower()} {d.day}, {d.year}",  # nov 22, 2026
    "d_mon_y_dashes_upper": lambda d: f"{d.day:02d}-{_mon(d).upper()}-{d.year}",  # 22-NOV-2026
}
FORMATS: list[str] = list(_FORMATTERS)
_TWO_DIGIT_FORMATS = frozenset({"us_yy", "us_yy_padded"})


def format_applies(date: datetime.date, fmt_name: str) -> bool:
    """Whether `fmt_name` may write `date` (two-digit-year formats only for 2000-2049)."""
    if fmt_name not in _FORMATTERS:
        raise ConfigError(f"unknown date format {fmt_name!r}; formats: {', '.join(FORMATS)}")
    return fmt_name not in _TWO_DIGIT_FORMATS or TWO_DIGIT_YEARS[0] <= date.year <= TWO_DIGIT_YEARS[1]


def format_date(date: datetime.date, fmt_name: str) -> str:
    """`date` written in the format `fmt_name` (one of FORMATS). ValueError for an unknown name, or a two-digit-year
    format asked for a year outside 2000-2049."""
    if fmt_name not in _FORMATTERS:
        raise ConfigError(f"unknown date format {fmt_name!r}; formats: {', '.join(FORMATS)}")
    if not 1000 <= date.year <= 9999:
        raise ConfigError(f"dates are written with four-digit years; got {date}")
    return _FORMATTERS[fmt_name](date)


def _check_count(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be an int >= 0, got {n!r}")
    return n


def date_pairs(n: int, seed: int, start_year: int = 1950, end_year: int = 2049) -> list[tuple[str, str]]:
    """n (source text, "YYYY-MM-DD") pairs, deterministic by seed.

    Dates are uniform over start_year-01-01 .. end_year-12-31; each example's format is uniform over the formats
    that may write its date (all of FORMATS for 2000-2049; the two-digit-year ones are left out for other years).
    """
    _check_count(n)
    for name, year in (("start_year", start_year), ("end_year", end_year)):
        if isinstance(year, bool) or not isinstance(year, int) or not 1000 <= year <= 9999:
            raise ConfigError(f"{name} must be a four-digit int year, got {year!r}")
    if start_year > end_year:
        raise ConfigError(f"start_year={start_year} is after end_year={end_year}")
    rng = random.Random(seed)
    first = datetime.date(start_year, 1, 1).toordinal()
    last = datetime.date(end_year, 12, 31).toordinal()
    everywhere = FORMATS
    four_digit_only = [f for f in FORMATS if f not in _TWO_DIGIT_FORMATS]
    pairs = []
    for _ in range(n):
        date = datetime.date.fromordinal(rng.randint(first, last))
        names = everywhere if TWO_DIGIT_YEARS[0] <= date.year <= TWO_DIGIT_YEARS[1] else four_digit_only
        pairs.append((_FORMATTERS[rng.choice(names)](date), date.isoformat()))
    return pairs


def __getattr__(name: str):
    """`task_pairs` and `TASKS` moved to aiayn.data.tasks (every built-in task in one module); kept here too."""
    if name in ("task_pairs", "TASKS"):
        from aiayn.data import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'aiayn.data.dates' has no attribute {name!r}")
