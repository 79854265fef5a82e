"""Route-map rules without MLflow: selectors, who serves a cell, what a map refuses (docs/routing.md)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from quantml.bundle import FeatureContract
from quantml.contracts import QuantmlInputError
from quantml.registry.routing import (
    CROSS_SECTIONAL,
    RoutedBundle,
    RouteEntry,
    check_map,
    owner,
    parse_model_version,
    parse_selector,
)
from quantml.registry.store import RegistryError

SYMBOLS = ("BNB", "BTC", "ETH", "SOL")


def fake_bundle(horizons=("1h", "4h"), symbols=SYMBOLS, cross_sectional=False, inputs=("timestamp", "symbol", "close")):
    contract = FeatureContract(list(inputs), [], {}, [], list(horizons))
    metadata = {"first_bars": {s: "2024-01-01T00:00:00+00:00" for s in symbols}, "periods_per_year": 8760.0}
    if cross_sectional:
        metadata[CROSS_SECTIONAL] = True
    return SimpleNamespace(
        contract=contract, metadata=metadata, signal={"cost": 0.0}, strategy=None, data_fingerprint="fp"
    )


def test_selectors_parse_to_sorted_names_or_all():
    assert parse_selector(None, "symbols") is None and parse_selector("*", "symbols") is None
    assert parse_selector("ETH, BTC", "symbols") == ("BTC", "ETH")
    assert parse_selector(["4h", "1h", "4h"], "horizons") == ("1h", "4h")
    with pytest.raises(QuantmlInputError, match="mixes"):
        parse_selector("BTC,*", "symbols")
    assert parse_model_version("served:3") == ("served", "3") and parse_model_version("a/b/2") == ("a/b", "2")
    with pytest.raises(RegistryError, match="not NAME:VERSION"):
        parse_model_version("served")
    entry = RouteEntry(("BTC",), None, "m", "2", previous=(("m", "1"),))
    assert RouteEntry.from_dict(entry.to_dict()) == entry


def test_the_most_specific_entry_serves_a_cell_and_the_later_breaks_ties():
    bundles = {"a/1": fake_bundle(), "b/1": fake_bundle(), "c/1": fake_bundle(horizons=("1h",)), "d/1": fake_bundle()}
    entries = [
        RouteEntry(None, None, "a", "1"),
        RouteEntry(("BTC", "ETH"), None, "b", "1"),
        RouteEntry(None, ("4h",), "c", "1"),  # c has no 4h: covers nothing
        RouteEntry(("ETH",), ("4h",), "d", "1"),
        RouteEntry(("BTC",), None, "d", "1"),
    ]
    served = {(s, h): owner(entries, bundles, s, h).model for s in SYMBOLS for h in ("1h", "4h")}
    assert served[("SOL", "1h")] == "a" and served[("SOL", "4h")] == "a"
    assert served[("ETH", "1h")] == "b" and served[("ETH", "4h")] == "d"  # symbol + horizon beats symbol
    assert served[("BTC", "1h")] == "d"  # two symbol entries: the later one
    assert owner(entries, bundles, "SOL", "7d") is None


def test_a_map_refuses_a_missing_default_symbol_horizon_or_a_split_cross_section():
    bundles = {"a/1": fake_bundle(), "x/1": fake_bundle(cross_sectional=True), "b/1": fake_bundle(symbols=("BTC",))}
    with pytest.raises(RegistryError, match="exactly one default entry"):
        check_map([RouteEntry(("BTC",), None, "a", "1")], bundles)
    with pytest.raises(RegistryError, match="not trained on symbol ETH"):
        check_map([RouteEntry(None, None, "a", "1"), RouteEntry(("ETH",), None, "b", "1")], bundles)
    with pytest.raises(RegistryError, match="has no horizon 1d"):
        check_map([RouteEntry(None, ("1d",), "a", "1"), RouteEntry(None, None, "a", "1")], bundles)
    with pytest.raises(RegistryError, match="only be routed for all its symbols"):
        check_map([RouteEntry(None, None, "a", "1"), RouteEntry(("BTC",), None, "x", "1")], bundles)
    with pytest.raises(RegistryError, match="serves all its symbols at 1h or none"):
        check_map([RouteEntry(None, None, "x", "1"), RouteEntry(("BTC",), ("1h",), "a", "1")], bundles)
    check_map([RouteEntry(None, None, "x", "1"), RouteEntry(None, ("1h",), "a", "1")], bundles)  # a whole horizon


def test_the_routed_bundle_reads_the_union_of_inputs_and_horizons():
    bundles = {
        "a/1": fake_bundle(horizons=("4h",)),
        "b/1": fake_bundle(horizons=("1d", "1h"), inputs=("timestamp", "symbol", "close", "funding_rate")),
    }
    routed = RoutedBundle.build([RouteEntry(None, None, "a", "1"), RouteEntry(("BTC",), None, "b", "1")], bundles)
    assert routed.contract.horizons == ["1h", "4h", "1d"]  # shortest first
    assert routed.contract.input_columns == ["close", "funding_rate", "symbol", "timestamp"]
    assert routed.metadata["periods_per_year"] == 8760.0 and set(routed.metadata["first_bars"]) == set(SYMBOLS)
