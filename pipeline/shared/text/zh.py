"""Chinese: upstream's zh rules, with a small numeral reader in place of wetext."""

from __future__ import annotations

import re

_ZH_DIGITS = "零一二三四五六七八九"


def _zh_group(g: int) -> str:
    out, zero = "", False
    for power, unit in ((3, "千"), (2, "百"), (1, "十"), (0, "")):
        d = g // 10 ** power % 10
        if d == 0:
            zero = bool(out)
            continue
        out += ("零" if zero else "") + _ZH_DIGITS[d] + unit
        zero = False
    return out


def _zh_int(digits: str) -> str:
    """Chinese reading of an integer ("10005" → 一万零五); leading zeros or > 16 digits: digit by digit."""
    if len(digits) > 1 and digits[0] == "0" or len(digits) > 16:
        return "".join(_ZH_DIGITS[int(d)] for d in digits)
    n = int(digits)
    if n == 0:
        return "零"
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    out, gap = "", False
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g == 0:
            gap = bool(out)
            continue
        if out and (gap or g < 1000):
            out += "零"
        out += _zh_group(g) + ("", "万", "亿", "万亿")[i]
        gap = False
    return out[1:] if out.startswith("一十") else out


def _zh_amount(num: str) -> str:
    whole, _, frac = num.partition(".")
    return _zh_int(whole) + ("点" + "".join(_ZH_DIGITS[int(d)] for d in frac) if frac else "")


def _replace_blank(text: str) -> str:
    """Upstream's replace_blank: keep a space only between two non-space ASCII characters."""
    out = []
    for i, c in enumerate(text):
        if c == " ":
            left = text[i - 1] if i > 0 else ""
            right = text[i + 1] if i + 1 < len(text) else ""
            if not (left.isascii() and left not in (" ", "") and right.isascii() and right not in (" ", "")):
                continue
        out.append(c)
    return "".join(out)


def _normalize_zh(text: str) -> str:
    """Upstream zh rules (replace_blank, ²/³, ``.``→``。``, `` - ``→``，``, brackets removed) after numbers:
    percent (百分之), years before 年 digit by digit, times, decimals (点), negatives (负), integers."""
    text = re.sub(r"(\d+(?:\.\d+)?)\s?%", lambda m: "百分之" + _zh_amount(m[1]), text)
    text = re.sub(r"(\d{4})(?=\s?年)", lambda m: "".join(_ZH_DIGITS[int(d)] for d in m[1]), text)
    text = re.sub(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])",
                  lambda m: _zh_int(str(int(m[1]))) + "点" + (_zh_int(m[2].lstrip("0") or "0") + "分"
                                                              if m[2] != "00" else ""), text)
    text = re.sub(r"(?<![\dA-Za-z.])-(?=\d)", "负", text)
    text = re.sub(r"\d+(?:\.\d+)?", lambda m: _zh_amount(m.group()), text)
    text = _replace_blank(text)
    text = text.replace("²", "平方").replace("³", "立方")
    text = text.replace(".", "。").replace(" - ", "，")
    for c in "（）【】`":
        text = text.replace(c, "")
    return text.replace("——", " ")
