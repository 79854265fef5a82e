"""From config to the model-ready panel: load, causal features, cost-aware labels, samples."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from quantml.bundle import FeatureContract
from quantml.contracts import REQUIRED_COLUMNS, QuantmlInputError
from quantml.contracts.config import build
from quantml.data import data_fingerprint, infer_bar_frequency, load_panel, periods_per_year
from quantml.features import build_features, event_activity_mask
from quantml.labels import make_labels
from quantml.models.base import PanelData

# per horizon, from quantml.labels.Labels; t1 = the label end (datetime64, naive UTC here)
REALISED = ("ret", "ret_after_cost", "dir", "vol", "t1")


@dataclass
class PreparedData:
    """The model-ready panel plus what evaluation needs to know about it."""

    panel: pd.DataFrame
    data: PanelData
    samples: np.ndarray  # positions (into data) of usable samples, in time order
    realised: pd.DataFrame  # per row: ret/ret_after_cost/dir/vol/t1 per horizon + ret_next_bar
    contract: FeatureContract
    fingerprint: str
    bar: pd.Timedelta
    periods_per_year: float
    skipped_blocks: dict


def seed_everything(seed: int) -> None:
    """Seed Python and NumPy; backbones seed their own libraries (LightGBM, torch) from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))


def prepare_data(cfg: DictConfig) -> PreparedData:
    """Load the panel, build causal features and cost-aware labels, select samples."""
    horizons = list(cfg.horizon.horizons)
    costs = build(cfg.cost, "cost", "quantml.market.CostModel")
    panel = load_panel(cfg.data)
    drop = list(cfg.ablation.drop_modalities or [])
    feature_set = OmegaConf.to_container(cfg.feature_set, resolve=True)
    features = build_features(panel, feature_set, drop)
    labels = make_labels(panel, horizons, costs.round_trip)
    if features.frame.shape[1] == 0:
        raise QuantmlInputError(
            f"feature_set={cfg.feature_set.get('name', '?')} with ablation={cfg.ablation.name} leaves no "
            f"features for this panel (skipped: {features.skipped}); choose a feature_set whose inputs "
            f"the data has, e.g. feature_set=price"
        )
    data = PanelData.assemble(panel, features, horizons, labels)
    samples = data.labelled_rows()
    if cfg.ablation.get("event_window"):
        samples = samples[event_activity_mask(panel, cfg.ablation.event_window)[samples]]
    # time order (then symbol) so splitters and reports see a timeline
    samples = samples[np.lexsort((data.symbol_codes[samples], data.t0[samples]))]
    if len(samples) == 0:
        raise QuantmlInputError(
            "no labelled samples: the panel is shorter than the longest horizon "
            f"({horizons[-1]}) or the event window keeps nothing; use more data or shorter horizons"
        )
    realised = {f"{name}@{h}": getattr(labels, name)[:, j] for j, h in enumerate(horizons) for name in REALISED}
    realised["ret_next_bar"] = labels.ret_next_bar
    contract = FeatureContract(
        input_columns=sorted(set(features.input_columns) | set(REQUIRED_COLUMNS)),
        feature_names=list(features.frame.columns),
        feature_set=feature_set,
        drop_modalities=drop,
        horizons=horizons,
    )
    return PreparedData(
        panel=panel,
        data=data,
        samples=samples,
        realised=pd.DataFrame(realised),
        contract=contract,
        fingerprint=data_fingerprint(panel),
        bar=infer_bar_frequency(panel),
        periods_per_year=float(cfg.data.get("periods_per_year") or periods_per_year(panel)),
        skipped_blocks=dict(features.skipped),
    )


def time_range(data: PanelData, rows: np.ndarray) -> tuple[str, str]:
    """First and last ``t0`` of ``rows`` as UTC strings (empty strings for no rows)."""
    if not len(rows):
        return "", ""
    t = data.t0[rows]
    return str(pd.Timestamp(t.min(), tz="UTC")), str(pd.Timestamp(t.max(), tz="UTC"))
