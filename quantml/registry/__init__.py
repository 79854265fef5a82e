"""The MLflow model registry as the candidate -> active -> rollback store, with promotion gates,
and route maps (``routing``: the active model per symbol and horizon, a registered model of its own).

``ACTIVE`` is the serving alias; ``CHAMPION`` (its 0.1 name) is kept for one release and moves
with it on every promotion and rollback.
"""

from quantml.registry.commands import (
    GateRefused,
    Promotion,
    check_gates,
    history,
    list_models,
    list_versions,
    promote,
    register,
    rollback,
)
from quantml.registry.gates import GateReport, GateResult, evaluate_gates, load_gates_config
from quantml.registry.routing import (
    RoutedBundle,
    RouteEntry,
    check_route_gates,
    rollback_entry,
    route,
    routes,
)
from quantml.registry.store import (
    ACTIVE,
    CANDIDATE,
    CHAMPION,
    Event,
    RegistryError,
    RegistryLockTimeout,
    RegistryStore,
    active_lineage,
    champion_lineage,
)

__all__ = [
    "ACTIVE",
    "CANDIDATE",
    "CHAMPION",
    "Event",
    "GateRefused",
    "GateReport",
    "GateResult",
    "Promotion",
    "RegistryError",
    "RegistryLockTimeout",
    "RegistryStore",
    "RouteEntry",
    "RoutedBundle",
    "active_lineage",
    "champion_lineage",
    "check_gates",
    "check_route_gates",
    "evaluate_gates",
    "history",
    "list_models",
    "list_versions",
    "load_gates_config",
    "promote",
    "register",
    "rollback",
    "rollback_entry",
    "route",
    "routes",
]
