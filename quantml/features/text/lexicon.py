"""Sentiment of raw texts from a lexicon that ships in a package (no download at run time).

``builtin``: a small valence word list shipped in quantml (general English and market slang, VADER-style
valences in [-4, 4]). ``vader``: the lexicon of the ``vaderSentiment`` package (``pip install
vaderSentiment``; 7,500 entries). Both are scored the same way, fast and vectorised: the sum ``s`` of the
valences of the text's tokens, normalised as VADER's compound score, ``s / sqrt(s^2 + 15)`` in (-1, 1) -- the
lexicon, not VADER's full rule set (negation, boosters, capitals, punctuation).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from quantml.contracts import QuantmlInputError

LEXICONS = ("builtin", "vader")
VADER_ALPHA = 15.0

# fmt: off
BUILTIN = {
    # positive
    "good": 1.9, "great": 3.1, "love": 3.2, "nice": 1.8, "happy": 2.7, "win": 2.8, "winning": 2.4,
    "best": 3.2, "excellent": 2.7, "amazing": 2.8, "awesome": 3.1, "strong": 2.3, "gain": 2.4,
    "gains": 2.4, "profit": 1.9, "up": 0.5, "buy": 0.8, "bull": 1.5, "bullish": 2.0, "moon": 1.5,
    "pump": 1.0, "rally": 1.8, "breakout": 1.5, "hodl": 0.8, "undervalued": 1.2, "safe": 1.9,
    "confident": 2.2, "opportunity": 1.8, "success": 2.7, "positive": 2.6, "recover": 1.6,
    # negative
    "bad": -2.5, "terrible": -2.1, "hate": -2.7, "awful": -2.0, "sad": -2.1, "lose": -1.6,
    "loss": -1.3, "losses": -1.6, "worst": -3.1, "weak": -1.9, "fear": -2.2, "panic": -2.3,
    "down": -0.5, "sell": -0.6, "bear": -1.5, "bearish": -2.0, "dump": -1.6, "crash": -2.9,
    "rug": -2.0, "scam": -2.7, "fraud": -2.8, "rekt": -2.0, "hack": -2.0, "hacked": -2.3,
    "overvalued": -1.2, "risk": -1.1, "risky": -1.4, "dead": -3.3, "bubble": -1.0, "exit": -0.4,
    "negative": -2.7, "fail": -2.5, "failed": -2.3, "worry": -1.9,
}
# fmt: on


@lru_cache(maxsize=4)
def lexicon_words(name: str = "builtin") -> dict[str, float]:
    """``{token: valence}`` of the lexicon ``name`` (:data:`LEXICONS`)."""
    if name == "builtin":
        return dict(BUILTIN)
    if name == "vader":
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise QuantmlInputError(
                "data.text.lexicon=vader needs the vaderSentiment package: pip install vaderSentiment "
                "(or use data.text.lexicon=builtin)"
            ) from None
        return {str(k).lower(): float(v) for k, v in SentimentIntensityAnalyzer().lexicon.items()}
    raise QuantmlInputError(f"data.text.lexicon={name!r} is not a lexicon; choose one of {list(LEXICONS)}")


def sentiment(texts, name: str = "builtin", tokens: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """float [m] in (-1, 1): the compound lexicon score of each of ``m`` texts (0 for no lexicon word).
    ``tokens``: ``(doc, tokens)`` of :func:`quantml.features.text.towers.tokenize` when already done."""
    import pandas as pd

    from quantml.features.text.towers import tokenize

    m = len(texts)
    doc, tok = tokenize(texts) if tokens is None else tokens
    valence = pd.Series(tok, dtype=object).map(lexicon_words(name)).to_numpy(dtype=np.float64, na_value=0.0)
    s = np.bincount(doc, weights=np.nan_to_num(valence), minlength=m)
    return s / np.sqrt(s * s + VADER_ALPHA)
