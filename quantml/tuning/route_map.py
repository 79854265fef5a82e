"""``quantml tune map=NAME:VERSION``: a route map's thresholds tuned on the book the map trades.

A map routes each (symbol, horizon) cell to the version that serves it; its book is the union of those
cells' out-of-sample rows, traded together (:class:`quantml.registry.routed_book.RoutedBook`, the book
its ``routed_book`` gate judges). This module turns that book into a study's source
(:class:`~quantml.tuning.source.SourceRun`): the union frame, the default entry's run config (costs,
signal, strategy) and derived values, every entry's market bars. Its run is the map version's route
run, so the study is logged as a child of that run, and ``attach=NAME:VERSION`` (the same map version)
registers a new map version whose bundle carries the tuned thresholds, served for every cell.

Only thresholds and minimum confidences are searched: the served contract's weights come from each
entry's own strategy, so a tuned allocator would be judged by the gate but never served.
"""

from __future__ import annotations

from dataclasses import replace

from quantml.contracts import QuantmlInputError
from quantml.registry.store import RegistryStore
from quantml.tuning.source import SourceRun
from quantml.tuning.thresholds import TuneSettings

MAP_NOTE = (
    "a route map's study searches thresholds and minimum confidences only (search.target_vol and "
    "search.risk_budget are off): each entry's own strategy sizes the served weights"
)


def parse_map(value) -> tuple[str, str]:
    """``"NAME:VERSION"`` -> ``(NAME, VERSION)``."""
    name, sep, version = str(value).rpartition(":")
    if not sep or not name or not version.isdigit():
        raise QuantmlInputError(f"map={value!r}: use map=NAME:VERSION of a route map, e.g. map=desk:3")
    return name, version


def map_settings(settings: TuneSettings) -> TuneSettings:
    """``settings`` without the allocator part of the search (see :data:`MAP_NOTE`)."""
    return replace(settings, target_vol=None, tune_risk_budget=False)


def map_source(value, tracking_uri: str | None = None) -> SourceRun:
    """The routed book of route map ``value`` (``NAME:VERSION``) as a study's source; a name that is
    not a route map, or a map whose entries form no one book, is refused with the reason."""
    from quantml.registry.routed_book import RoutedBook
    from quantml.registry.routing import is_route_map

    name, version = parse_map(value)
    store = RegistryStore(tracking_uri)
    if not is_route_map(store, name):
        raise QuantmlInputError(
            f"map={value}: {name} is not a route map (`quantml registry route` makes one); "
            f"tune a model version's source run with run_id=<its run id> instead"
        )
    book = RoutedBook(store, name, version)
    if book.problem:
        raise QuantmlInputError(f"cannot tune route map {book.label}: no routed book ({book.problem})")
    run = book.default_run
    route_run = book.map_version.run_id
    return SourceRun(
        route_run,
        store.client.get_run(route_run).info.experiment_id,
        book.books.frame,
        {},
        dict(run.tags),
        list(book.books.horizons),
        cfg=run.config(),
        derived=run.derived(),
        market=book.books.market,
    )
