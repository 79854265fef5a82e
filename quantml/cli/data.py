"""quantml data audit [data=CONFIG_OR_FILE] [data.*=...] [audit.*=...] [output_dir=DIR]

Coverage of a panel and its streams (docs/data.md, "Data readiness"): per symbol the bars present
against the bars its calendar expects (declared with data.calendars, or inferred), its longest gap
and its share of stale closes; per symbol x stream the share of bars with <stream>_missing = 1;
the text post and comment counts per day; then a PASS/FAIL per check and the verdict.

Settings are Hydra key=value overrides of the packaged conf/data_audit.yaml plus any data.* override:
  data=synthetic | data=parquet data.path=DIR | data=FILE     the panel (default: stocks_daily)
  data.calendars='{BTC: 24/7, default: XNYS}'                 declared calendars (else inferred)
  audit.window=30d                                            only the last 30 days of the panel
  audit.min_coverage=0.95 audit.max_gap=1d audit.max_missing=0.2 audit.max_stale=0.01
  audit.max_missing_by='{macro_*: 0.5}'                       per-stream limits (null: a check off)
  output_dir=DIR                                              also write the CSV tables and audit.json
The audit.* keys default to data.ready.*, the thresholds `quantml train data.require_ready=true` checks.

Exit codes: 0 ready; 1 not ready (each shortfall listed); 2 bad input (one line).
"""

from __future__ import annotations

import sys

USAGE = "quantml data audit [data=CONFIG_OR_FILE] [data.*=...] [audit.*=...] [output_dir=DIR]"
SETTINGS = (
    "data=, data.*=, audit.window=, audit.min_coverage=, audit.max_gap=, audit.max_missing=, "
    "audit.max_missing_by=, audit.max_stale=, output_dir=, text_rows=, seed="
)


def run_audit(argv: list[str]):
    """The :class:`~quantml.data.audit.DataAudit` of the panel ``argv`` describes (and its config)."""
    from omegaconf import OmegaConf

    from quantml.cli.common import compose, refuse_non_settings
    from quantml.data import load_panel
    from quantml.data.audit import ReadyThresholds, audit_panel
    from quantml.serving import data_overrides

    refuse_non_settings(argv, USAGE)
    cfg = compose("data_audit", data_overrides(argv))
    node = OmegaConf.to_container(cfg.audit, resolve=True)
    thresholds = ReadyThresholds.from_config(node, "audit")
    panel = load_panel(cfg.data)
    calendars = cfg.data.get("calendars", None)
    if calendars is not None and not isinstance(calendars, str):
        calendars = OmegaConf.to_container(calendars, resolve=True)
    return audit_panel(panel, calendars, node.get("window"), thresholds), cfg


def main(argv: list[str] | None = None) -> int:
    from quantml.cli.common import error_exit

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help") or any(a in ("-h", "--help") for a in argv[1:]):
        print(__doc__)
        return 0 if argv else 2
    sub, args = argv[0], argv[1:]
    if sub != "audit":
        print(f"error: unknown data command {sub!r}; usage: {USAGE}", file=sys.stderr)
        return 2
    try:
        audit, cfg = run_audit(args)
        print(audit.to_text(int(cfg.get("text_rows", 14))))
        if cfg.get("output_dir"):
            paths = audit.write(cfg.output_dir)
            print(f"wrote {len(paths)} file(s) to {cfg.output_dir}")
    except Exception as exc:  # noqa: BLE001 - error_exit re-raises what is not bad input
        return error_exit(exc, SETTINGS)
    return 0 if audit.ready else 1


if __name__ == "__main__":
    sys.exit(main())
