"""MATH-dataset answer normalisation as d1 uses it (Hendrycks et al.'s ``is_equiv``).

Behaviour, including its failure modes, matches d1's ``parser_helper``/``math500_utils``: when the
normalisation raises on a string, ``is_equiv`` falls back to comparing the raw strings.
"""

from __future__ import annotations

import numpy as np

_BOXED_SPACE = "\\boxed "
_BOXED_BRACE = "\\boxed{"


class _NormalisationError(Exception):
    """Raised where the reference normalisation would raise; triggers the raw-string fallback."""


def last_boxed_only_string(text: str) -> str | None:
    r"""Return the last ``\boxed{...}`` (or ``\fbox{...}``) with balanced braces, as d1 does.

    Quirks kept: ``"\boxed "`` anywhere wins (text after the last one, up to ``$``); text with no box
    is returned unchanged; an unclosed box gives ``None``.
    """
    if _BOXED_SPACE in text:
        return _BOXED_SPACE + text.split(_BOXED_SPACE)[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    end = _closing_brace(text, start)
    return None if end is None else text[start : end + 1]


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the first ``}`` after ``start`` that brings the brace depth counted from ``start`` to 0.

    d1 walks character by character in Python; the same count as a cumulative sum over the UTF-8 bytes
    (braces are single bytes there) takes milliseconds on a megabyte.
    """
    codes = np.frombuffer(text[start:].encode("utf-8", "surrogatepass"), dtype=np.uint8)
    closes = codes == ord("}")
    depth = np.cumsum((codes == ord("{")).astype(np.int64) - closes)
    hits = np.flatnonzero(closes & (depth == 0))
    if not hits.size:
        return None
    chars = np.count_nonzero((codes[: hits[0] + 1] & 0xC0) != 0x80)  # bytes that start a character
    return start + int(chars) - 1


def remove_boxed(text: str) -> str:
    r"""Strip a ``\boxed{...}``/``\boxed `` wrapper; other strings come back unchanged.

    Raises ``TypeError`` on ``None`` and ``ValueError`` on a malformed ``"\boxed "`` form, where d1 raises.
    """
    if _BOXED_SPACE in text:
        if not text.startswith(_BOXED_SPACE):
            raise ValueError("'\\boxed ' must start the string")
        return text[len(_BOXED_SPACE) :]
    if text.startswith(_BOXED_BRACE) and text.endswith("}"):
        return text[len(_BOXED_BRACE) : -1]
    return text


def extract_boxed_answer(text: str) -> str | None:
    """``remove_boxed(last_boxed_only_string(text))``, ``None`` where d1's ``try`` would fail."""
    boxed = last_boxed_only_string(text)
    if boxed is None:
        return None
    try:
        return remove_boxed(boxed)
    except ValueError:
        return None


def _fix_fracs(string: str) -> str:
    parts = string.split("\\frac")
    out = [parts[0]]
    for part in parts[1:]:
        if not part:
            raise _NormalisationError("\\frac at end of string")
        if part[0] == "{":
            out.append("\\frac" + part)
            continue
        if len(part) < 2:
            return string
        num, den, rest = part[0], part[1], part[2:]
        out.append("\\frac{" + num + "}" + (den if den == "{" else "{" + den + "}") + rest)
    return "".join(out)


def _remove_right_units(string: str) -> str:
    if "\\text{ " not in string:
        return string
    pieces = string.split("\\text{ ")
    if len(pieces) != 2:
        raise _NormalisationError("more than one '\\text{ '")
    return pieces[0]


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    pieces = string.split("\\sqrt")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if not piece:
            raise _NormalisationError("\\sqrt at end of string")
        out.append("\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:]))
    return "".join(out)


def _fix_a_slash_b(string: str) -> str:
    pieces = string.split("/")
    if len(pieces) != 2:
        return string
    try:
        num, den = int(pieces[0]), int(pieces[1])
    except ValueError as err:  # the reference lets this escape, so is_equiv compares raw strings
        raise _NormalisationError(str(err)) from err
    if string != f"{num}/{den}":
        return string
    return "\\frac{" + str(num) + "}{" + str(den) + "}"


def strip_string(string: str) -> str:
    """The MATH dataset's answer normalisation; raises ``_NormalisationError`` where the reference raises."""
    for old, new in (
        ("\n", ""),
        ("\\!", ""),
        ("\\\\", "\\"),
        ("tfrac", "frac"),
        ("dfrac", "frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\$", ""),
    ):
        string = string.replace(old, new)
    string = _remove_right_units(string)
    string = string.replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    halves = string.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        string = halves[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def is_equiv(str1: str | float | None, str2: str | float | None) -> bool:
    """d1's answer equivalence: floats within 1e-6, else equal normalised strings (raw on failure)."""
    if type(str1) is float or type(str2) is float:  # exact type check, as in the reference
        try:
            return abs(float(str1) - float(str2)) < 1e-6  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    if str1 is None or str2 is None:
        return str1 is None and str2 is None
    try:
        return strip_string(str1) == strip_string(str2)
    except Exception:  # the reference falls back to raw equality on any normalisation failure
        return str1 == str2
