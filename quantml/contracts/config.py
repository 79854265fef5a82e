"""Objects from config groups: ``hydra.utils.instantiate`` on the group's ``_target_``.

Every config group that describes an object (``cost``, ``signal``, ``strategy`` and its
``allocator``, ``validation``, ``evaluation.calibration``) names its class or factory in
``_target_``; :func:`build` instantiates it and turns what goes wrong into a
:class:`QuantmlInputError` naming the group and the bad key.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from quantml.contracts.errors import QuantmlInputError

_HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_", "_args_")


def to_mapping(cfg, group: str) -> dict:
    """A plain dict of ``cfg`` (a DictConfig, resolved, or a mapping); None -> ``{}``."""
    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        try:
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception as exc:  # noqa: BLE001 - anything not a config is bad input
            raise QuantmlInputError(
                f"{group} config must be a mapping or DictConfig, got {type(cfg).__name__}"
            ) from exc
    return dict(cfg)


def locate(target: str, group: str):
    """The class or function a ``_target_`` names."""
    from hydra.utils import get_object

    try:
        return get_object(str(target))
    except Exception as exc:  # noqa: BLE001 - hydra raises ImportError/ValueError variants
        raise QuantmlInputError(
            f"{group}._target_={target!r} cannot be imported ({exc}); name a class or "
            f"function such as quantml.market.CostModel"
        ) from None


def check_keys(target_obj, keys, group: str, target: str) -> None:
    """Refuse a key that is not a parameter of ``target_obj`` (a typo is an error, not ignored)."""
    try:
        params = inspect.signature(target_obj).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in keys if k not in known and k not in _HYDRA_KEYS]
    if unknown:
        raise QuantmlInputError(
            f"{group}.{unknown[0]} is not a setting of {group} ({target}); its settings are {known}"
        )


def build(cfg, group: str, default_target: str | None = None, *, drop: tuple[str, ...] = (), **kwargs):
    """Instantiate the object ``cfg`` describes (``hydra.utils.instantiate``).

    ``group``: the config group, for messages (``cost``, ``strategy`` ...); ``default_target``:
    used when ``cfg`` has no ``_target_`` (a config written before targets, or a logged one);
    ``drop``: descriptive keys that are not constructor arguments (``name``); ``kwargs``:
    arguments the caller supplies (they win over the config's).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = {k: v for k, v in to_mapping(cfg, group).items() if k not in drop}
    target = node.get("_target_", default_target)
    if not target:
        raise QuantmlInputError(
            f"the {group} config has no _target_; add `_target_: <class>` to its yaml "
            f"(see quantml/conf/{group.split('.')[0]}/)"
        )
    node["_target_"] = target
    check_keys(locate(target, group), [k for k in node if k not in kwargs], group, target)
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, QuantmlInputError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, QuantmlInputError):
            raise cause from None
        raise QuantmlInputError(
            f"could not build {group} ({target}): {exc.__cause__ or exc}; check the {group}.* keys"
        ) from None
    except QuantmlInputError:
        raise
    except (TypeError, ValueError) as exc:
        raise QuantmlInputError(f"could not build {group} ({target}): {exc}; check the {group}.* keys") from None
