"""The one check that a frame has the columns a step needs."""

from __future__ import annotations

from collections.abc import Iterable

from quantml.contracts.errors import QuantmlInputError


def require_columns(frame, columns: Iterable[str], what: str, fix: str = "") -> None:
    """Raise :class:`QuantmlInputError` ``"<what> lacks column(s) [...]; <fix>"`` unless every
    one of ``columns`` is in ``frame`` (a DataFrame, or anything with ``.columns``)."""
    have = frame.columns
    missing = [c for c in columns if c not in have]
    if missing:
        raise QuantmlInputError(f"{what} lacks column(s) {missing}" + (f"; {fix}" if fix else ""))
