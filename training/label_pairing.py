"""Pairing images with their label images for ``fringelive dataset``.

Two ways, both searched in ``--labels DIR`` (else beside each image):

* a suffix (``label_suffix``, default ``_label.png``): label = ``<image stem><suffix>``;
* a pattern (``--label-pattern``), e.g. ``label_{index}.png`` with fields ``{index}`` (the last
  run of digits in the image's stem, compared as a number so ``img_007`` pairs with ``label_7``),
  ``{stem}`` (the image's stem) and ``{name}`` (its file name), or a regular expression
  ``re:<regex>`` whose named groups ``index``/``stem`` must match the label file name. Every
  label file whose name matches the pattern is indexed once; an image pairs with the label of
  the same index (or stem).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LabelPattern", "LabelPatternError", "image_index"]

_FIELDS = ("index", "stem", "name")
_FIELD_RE = re.compile(r"\{(\w+)\}")


class LabelPatternError(ValueError):
    """A label pattern that cannot be used; the message names it."""


def image_index(stem: str) -> int | None:
    """The last run of digits in ``stem`` as an int (``"img_007"`` → 7), else ``None``."""
    runs = re.findall(r"\d+", stem)
    return int(runs[-1]) if runs else None


@dataclass(frozen=True)
class LabelPattern:
    """``text``: ``label_{index}.png`` style (fields ``{index}``, ``{stem}``, ``{name}``) or
    ``re:<regex>`` with a named group ``index`` or ``stem``."""

    text: str
    regex: re.Pattern = field(init=False, repr=False, compare=False)
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        text = self.text
        if not isinstance(text, str) or not text.strip():
            raise LabelPatternError(f"label pattern must be a non-empty string, got {text!r}")
        if text.startswith("re:"):
            try:
                regex = re.compile(text[3:])
            except re.error as e:
                raise LabelPatternError(f"label pattern {text!r}: not a regular expression: {e}") from None
        else:
            names = _FIELD_RE.findall(text)
            unknown = [n for n in names if n not in _FIELDS]
            if unknown or not names:
                raise LabelPatternError(f"label pattern {text!r} needs one of the fields "
                                        f"{', '.join('{' + f + '}' for f in _FIELDS)}"
                                        + (f", got {{{unknown[0]}}}" if unknown else ""))
            parts, pos = [], 0
            for m in _FIELD_RE.finditer(text):
                parts.append(re.escape(text[pos:m.start()]))
                group = m.group(1)
                parts.append(r"(?P<index>\d+)" if group == "index" else f"(?P<{group}>.+?)")
                pos = m.end()
            parts.append(re.escape(text[pos:]))
            try:
                regex = re.compile("^" + "".join(parts) + "$")
            except re.error as e:  # a field used twice
                raise LabelPatternError(f"label pattern {text!r}: {e}") from None
        groups = set(regex.groupindex)
        key = next((g for g in _FIELDS if g in groups), None)
        if key is None:
            raise LabelPatternError(f"label pattern {text!r} needs a named group 'index', 'stem' or 'name'")
        object.__setattr__(self, "regex", regex)
        object.__setattr__(self, "key", key)

    def matches(self, path: Path) -> bool:
        """True when ``path``'s file name is a label name by this pattern."""
        return self.regex.fullmatch(path.name) is not None

    def _key_of_label(self, path: Path) -> object | None:
        m = self.regex.fullmatch(path.name)
        if m is None:
            return None
        value = m.group(self.key)
        return int(value) if self.key == "index" else value

    def _key_of_image(self, image: Path) -> object | None:
        if self.key == "index":
            return image_index(image.stem)
        return image.stem if self.key == "stem" else image.name

    def index_labels(self, folders: list[Path]) -> dict[tuple[Path, object], Path]:
        """(folder, key) → label file for every file in ``folders`` whose name matches."""
        out: dict[tuple[Path, object], Path] = {}
        for folder in folders:
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                k = self._key_of_label(p) if p.is_file() else None
                if k is not None:
                    out.setdefault((folder, k), p)
        return out

    def label_for(self, image: Path, labels_dir: Path | None, index: dict[tuple[Path, object], Path]) -> Path | None:
        """The label of ``image`` from ``index`` (``labels_dir`` first, then the image's folder)."""
        key = self._key_of_image(image)
        if key is None:
            return None
        for folder in ([labels_dir] if labels_dir else []) + [image.parent]:
            hit = index.get((folder, key))
            if hit is not None and hit != image:
                return hit
        return None
