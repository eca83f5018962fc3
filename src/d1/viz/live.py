"""The terminal view of an answer being denoised (`d1 chat`): masked positions as placeholders, the tokens the
last step decided highlighted, every decided token coloured by its confidence (red 0 -> green 1)."""

from __future__ import annotations

from rich.text import Text

PLACEHOLDER = "\u2591"


def confidence_style(confidence: float) -> str:
    """A red-to-green colour for a probability in [0, 1]."""
    red, green = round(255 * (1 - confidence)), round(200 * confidence + 55)
    return f"rgb({red},{green},80)"


def denoising_text(
    pieces: list[str | None], confidence: dict[int, float], newest: set[int], hidden: set[int]
) -> Text:
    """The answer so far: `pieces[p]` (the text of position p's token, None while masked) coloured by
    `confidence[p]`, the positions in `newest` (the last step's) in reverse video, masked ones as
    placeholders; positions in `hidden` (special tokens such as EOS) are left out."""
    text = Text()
    for position, piece in enumerate(pieces):
        if position in hidden:
            continue
        if piece is None:
            text.append(PLACEHOLDER, style="dim")
            continue
        style = confidence_style(confidence.get(position, 1.0))
        text.append(piece, style=f"{style} reverse" if position in newest else style)
    return text
