"""Optional progress bars (tqdm when installed and wanted; otherwise a no-op with the same API)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


def progress_bar(enabled: bool, total: int | None, *, initial: int = 0, desc: str = "", unit: str = "it") -> Any:
    """A tqdm bar (``update``, ``set_postfix``, ``close``), or a silent stand-in when
    ``enabled`` is false or tqdm is missing."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
