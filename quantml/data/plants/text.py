"""A raw social text stream (posts and comments) with a planted, activity-gated word effect.

``data.text_stream=true`` (or ``{strength: 0.25, n_signal_words: 3, ...}``) switches it on. What is planted:

* per symbol, an **activity** regime (quiet / active, geometric durations, about ``active_share`` of the
  bars active) and, independently, **noise bursts** (``burst_share`` of the bars): both multiply the post
  rate by ``burst_mult``, so high volume alone does not say whether the words matter;
* every post has a handful of words of a pseudo-word vocabulary (Zipf frequencies, ``vocab_size`` words),
  a cashtag, sometimes a generic sentiment word (noise), and signal words: ``n_signal_words`` bullish
  (``moon``, ``pump``, ...) and as many bearish (``rug``, ``dump``, ...) words. In active bars their sign
  follows a latent per-bar tone; in quiet bars and bursts it is a coin flip;
* the **effect**: the net count (bullish minus bearish) of the organic posts that become available in bar
  ``t`` (``available_at`` in (close[t-1], close[t]]), scaled by the square root of their number, moves the
  return of bar ``t+1`` by ``strength * sigma[t+1] * net`` -- only where bar ``t`` is active;
* **bots**: a few authors each posting one fixed text many times in a bar (duplicates, no effect); comments
  (``parent_id`` = the post) arrive minutes to hours after their post, noise words only.

``noise_only=true`` plants no effect (the text is pure noise). Truth (``[T, N]``, row = the bar whose posts
carry the information): ``text_active`` (1 active), ``text_burst`` (1 noise burst), ``text_net`` (the scaled
net count of organic posts available in the bar), ``text_effect`` (what was added to the return of the
NEXT bar). Every draw comes from the plant's own generator: the default panel is untouched.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, QuantmlInputError
from quantml.data.plants import Plant, PlantContext

STREAM = "social_text"
COLUMNS = (SYMBOL, "event_time", "available_at", "platform", "post_id", "parent_id", "author", "text", "engagement")
BULL_WORDS = ("moon", "pump", "breakout", "bullish", "ape", "lambo", "rocket", "squeeze")
BEAR_WORDS = ("rug", "dump", "scam", "rekt", "bearish", "exit", "crash", "hack")
NOISE_SENTIMENT = ("good", "great", "love", "nice", "bad", "terrible", "hate", "awful", "happy", "sad")
PLATFORMS = ("x", "reddit", "telegram")
_SYLLABLES = ("ba", "ko", "ri", "tu", "ne", "sa", "lo", "mi", "da", "ve", "zu", "pe", "gi", "fo", "ha", "ju")


def vocabulary(size: int) -> list[str]:
    """``size`` distinct pseudo-words (two or three syllables), the same list for every seed."""
    n = len(_SYLLABLES)
    words = [a + b for a in _SYLLABLES for b in _SYLLABLES]
    words += [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES[: max(1, size // (n * n) + 1)]]
    return words[:size]


def _regime(rng: np.random.Generator, T: int, N: int, share: float, mean_len: float) -> np.ndarray:
    """Bool [T, N]: an on/off regime per column, on about ``share`` of the bars in runs of ~``mean_len``."""
    p_off = 1.0 / max(mean_len, 1.0)
    p_on = p_off * share / max(1.0 - share, 1e-9)
    out = np.zeros((T, N), dtype=bool)
    state = rng.random(N) < share
    u = rng.random((T, N))
    for t in range(T):  # a two-state chain: T steps over N columns at once
        state = np.where(state, u[t] >= p_off, u[t] < p_on)
        out[t] = state
    return out


class TextStreamPlant(Plant):
    """Emits ``streams()["social_text"]`` and plants the activity-gated word effect (module docstring).

    Options: ``strength`` (return per unit of scaled net count, in per-bar sigmas, default 0.25),
    ``n_signal_words`` (per side, 1..8, default 4), ``vocab_size`` (default 300), ``posts_per_hour``
    (organic posts per symbol and hour while quiet, default 1), ``burst_mult`` (post rate x in active bars
    and bursts, default 5), ``active_share`` / ``burst_share`` (0.2 / 0.1), ``n_bots`` (default 3),
    ``noise_only`` (true: no effect).
    """

    def __init__(
        self,
        strength: float = 0.25,
        n_signal_words: int = 4,
        vocab_size: int = 300,
        posts_per_hour: float = 1.0,
        burst_mult: float = 5.0,
        active_share: float = 0.2,
        burst_share: float = 0.1,
        n_bots: int = 3,
        noise_only: bool = False,
    ) -> None:
        if not 1 <= int(n_signal_words) <= len(BULL_WORDS):
            raise QuantmlInputError(f"data.text_stream.n_signal_words={n_signal_words} must be 1..{len(BULL_WORDS)}")
        if int(vocab_size) < 10:
            raise QuantmlInputError(f"data.text_stream.vocab_size={vocab_size} must be at least 10")
        for name, v in (("posts_per_hour", posts_per_hour), ("burst_mult", burst_mult), ("strength", strength)):
            if not np.isfinite(float(v)) or float(v) < 0:
                raise QuantmlInputError(f"data.text_stream.{name}={v} must be a number >= 0")
        for name, v in (("active_share", active_share), ("burst_share", burst_share)):
            if not 0.0 <= float(v) < 1.0:
                raise QuantmlInputError(f"data.text_stream.{name}={v} must be in [0, 1)")
        self.strength = float(strength)
        self.n_signal_words = int(n_signal_words)
        self.vocab_size = int(vocab_size)
        self.posts_per_hour = float(posts_per_hour)
        self.burst_mult = float(burst_mult)
        self.active_share = float(active_share)
        self.burst_share = float(burst_share)
        self.n_bots = int(n_bots)
        self.noise_only = bool(noise_only)
        self._table: pd.DataFrame | None = None

    # ------------------------------------------------------------------ hooks
    def returns(self, ctx: PlantContext, ret: np.ndarray) -> np.ndarray:
        table, net, active, burst = self._draw(ctx)
        self._table = table
        effect = np.zeros_like(ret)
        if not self.noise_only:
            effect[:-1] = self.strength * ctx.sigma[1:] * net[:-1] * active[:-1]
        ctx.truth.update(
            text_active=active.astype(np.float64),
            text_burst=burst.astype(np.float64),
            text_net=net,
            text_effect=effect,
        )
        out = ret.copy()
        out[1:] += effect[:-1]
        return out

    def streams(self, ctx: PlantContext, ret: np.ndarray) -> dict[str, pd.DataFrame]:
        if self._table is None:  # pragma: no cover - the generator always calls returns() first
            self.returns(ctx, ret)
        return {STREAM: self._table}

    # ------------------------------------------------------------------ drawing
    def _draw(self, ctx: PlantContext):
        rng, T, N = ctx.rng, len(ctx.ts), len(ctx.symbols)
        bar_ns = ctx.bar.value
        hours = ctx.bar / pd.Timedelta("1h")
        mean_len = max(3.0, ctx.bars_per("6h"))
        active = _regime(rng, T, N, self.active_share, mean_len)
        burst = _regime(rng, T, N, self.burst_share, mean_len / 2) & ~active
        tone = np.tanh(1.5 * rng.standard_normal((T, N)))  # the latent tone of an active bar
        rate = self.posts_per_hour * hours * np.where(active | burst, self.burst_mult, 1.0)
        counts = rng.poisson(rate)
        # organic posts: bar of the event, symbol
        pt, ps = np.nonzero(counts)
        reps = counts[pt, ps]
        pt, ps = np.repeat(pt, reps), np.repeat(ps, reps)
        m = len(pt)
        close = ctx.ts.asi8
        event = close[pt] - (rng.random(m) * bar_ns).astype(np.int64)  # inside (close[t-1], close[t]]
        lag = rng.exponential(0.15 * bar_ns, m).astype(np.int64)  # some become available a bar later
        avail = event + lag
        vis = np.searchsorted(close, avail, side="left")  # the bar whose close first reaches it
        # signal words: in active bars their sign follows the tone, elsewhere a coin flip
        n_sig = rng.poisson(0.8, m)
        p_bull = np.where(active[pt, ps], 0.5 + 0.45 * tone[pt, ps], 0.5)
        n_bull = rng.binomial(n_sig, p_bull)
        n_bear = n_sig - n_bull
        # the effect reads the posts available in each bar (visibility, not event time)
        net_sum = np.zeros((T, N))
        n_vis = np.zeros((T, N))
        ok = vis < T
        np.add.at(net_sum, (vis[ok], ps[ok]), (n_bull - n_bear)[ok])
        np.add.at(n_vis, (vis[ok], ps[ok]), 1.0)
        net = net_sum / np.sqrt(np.maximum(n_vis, 1.0))
        texts = self._texts(rng, ps, ctx.symbols, n_bull, n_bear)
        authors = np.char.add("user", rng.zipf(1.6, m).clip(1, 50_000).astype(str))
        engagement = np.floor(rng.lognormal(1.0, 1.2, m))
        posts = {
            SYMBOL: np.asarray(ctx.symbols, dtype=object)[ps],
            "event_ns": event,
            "avail_ns": avail,
            "author": authors.astype(object),
            "text": texts,
            "engagement": engagement,
        }
        bots = self._bots(rng, ctx, T, N, bar_ns)
        frame = pd.concat([pd.DataFrame(posts), bots], ignore_index=True)
        frame["platform"] = np.asarray(PLATFORMS, dtype=object)[rng.integers(0, len(PLATFORMS), len(frame))]
        frame["post_id"] = [f"p{i}" for i in range(len(frame))]
        frame["parent_id"] = None
        comments = self._comments(rng, frame)
        table = pd.concat([frame, comments], ignore_index=True)
        table["event_time"] = pd.to_datetime(table.pop("event_ns").to_numpy(np.int64), utc=True)
        table["available_at"] = pd.to_datetime(table.pop("avail_ns").to_numpy(np.int64), utc=True)
        table = table[list(COLUMNS)].sort_values([SYMBOL, "event_time"], kind="mergesort").reset_index(drop=True)
        return table, net, active, burst

    def _texts(self, rng, ps, symbols, n_bull, n_bear) -> np.ndarray:
        vocab = np.asarray(vocabulary(self.vocab_size), dtype=object)
        k = self.n_signal_words
        bull, bear = np.asarray(BULL_WORDS[:k], dtype=object), np.asarray(BEAR_WORDS[:k], dtype=object)
        m = len(ps)
        n_words = rng.integers(4, 10, m)
        ranks = (rng.zipf(1.3, int(n_words.sum())) - 1) % len(vocab)
        words = np.split(vocab[ranks], np.cumsum(n_words)[:-1])
        noise = rng.random(m) < 0.3
        noise_word = np.asarray(NOISE_SENTIMENT, dtype=object)[rng.integers(0, len(NOISE_SENTIMENT), m)]
        tags = np.char.add("$", np.asarray(symbols, dtype=str)[ps]).astype(object)
        out = np.empty(m, dtype=object)
        bulls = bull[rng.integers(0, k, int(n_bull.sum()))]
        bears = bear[rng.integers(0, k, int(n_bear.sum()))]
        bi = np.r_[0, np.cumsum(n_bull)]
        di = np.r_[0, np.cumsum(n_bear)]
        for i in range(m):  # one join per post: a few microseconds each
            parts = [tags[i], *words[i], *bulls[bi[i] : bi[i + 1]], *bears[di[i] : di[i + 1]]]
            if noise[i]:
                parts.append(noise_word[i])
            out[i] = " ".join(parts)
        return out

    def _bots(self, rng, ctx: PlantContext, T: int, N: int, bar_ns: int) -> pd.DataFrame:
        """Bots: each picks a few bars and posts one fixed text 5-20 times in each (duplicates, no effect)."""
        vocab = vocabulary(self.vocab_size)
        k = self.n_signal_words
        rows = []
        for b in range(self.n_bots):
            sym = int(rng.integers(N))
            word, bull = vocab[int(rng.integers(len(vocab)))], BULL_WORDS[int(rng.integers(k))]
            text = f"${ctx.symbols[sym]} {word} {bull} join now"
            n_bars = max(1, int(T * 0.02))
            bars = rng.integers(0, T, n_bars)
            reps = rng.integers(5, 21, n_bars)
            t = np.repeat(bars, reps)
            ev = ctx.ts.asi8[t] - (rng.random(len(t)) * bar_ns).astype(np.int64)
            rows.append(
                pd.DataFrame(
                    {
                        SYMBOL: ctx.symbols[sym],
                        "event_ns": ev,
                        "avail_ns": ev + 1_000_000_000,
                        "author": f"bot{b}",
                        "text": text,
                        "engagement": 0.0,
                    }
                )
            )
        if not rows:
            return pd.DataFrame(columns=[SYMBOL, "event_ns", "avail_ns", "author", "text", "engagement"])
        return pd.concat(rows, ignore_index=True)

    def _comments(self, rng, posts: pd.DataFrame) -> pd.DataFrame:
        """Comments on posts: Poisson(0.3 + engagement / 8) each, minutes to hours later, noise words."""
        n = rng.poisson(0.3 + np.minimum(posts["engagement"].to_numpy(), 40.0) / 8.0)
        parent = np.repeat(np.arange(len(posts)), n)
        m = len(parent)
        vocab = np.asarray(vocabulary(self.vocab_size), dtype=object)
        n_words = rng.integers(2, 7, m)
        ranks = (rng.zipf(1.3, int(n_words.sum())) - 1) % len(vocab)
        words = np.split(vocab[ranks], np.cumsum(n_words)[:-1]) if m else []
        noise_word = np.asarray(NOISE_SENTIMENT, dtype=object)[rng.integers(0, len(NOISE_SENTIMENT), m)]
        delay = rng.exponential(pd.Timedelta("40min").value, m).astype(np.int64)
        event = posts["event_ns"].to_numpy(np.int64)[parent] + delay
        return pd.DataFrame(
            {
                SYMBOL: posts[SYMBOL].to_numpy()[parent],
                "event_ns": event,
                "avail_ns": event + rng.exponential(pd.Timedelta("1min").value, m).astype(np.int64),
                "author": np.char.add("user", rng.zipf(1.6, m).clip(1, 50_000).astype(str)).astype(object),
                "text": [" ".join([*w, s]) for w, s in zip(words, noise_word)],
                "engagement": np.floor(rng.lognormal(0.0, 1.0, m)),
                "platform": posts["platform"].to_numpy()[parent],
                "post_id": [f"c{i}" for i in range(m)],
                "parent_id": posts["post_id"].to_numpy()[parent],
            }
        )
