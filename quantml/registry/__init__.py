"""The MLflow model registry as the candidate -> champion -> rollback store, with promotion gates."""
from quantml.registry.commands import (
    GateRefused, Promotion, check_gates, history, list_models, list_versions, promote, register, rollback,
)
from quantml.registry.gates import GateReport, GateResult, evaluate_gates, load_gates_config
from quantml.registry.store import (
    CANDIDATE, CHAMPION, Event, RegistryError, RegistryLockTimeout, RegistryStore, champion_lineage,
)

__all__ = [
    "CANDIDATE", "CHAMPION", "Event", "GateRefused", "GateReport", "GateResult", "Promotion",
    "RegistryError", "RegistryLockTimeout", "RegistryStore", "champion_lineage", "check_gates",
    "evaluate_gates", "history", "list_models", "list_versions", "load_gates_config", "promote",
    "register", "rollback",
]
