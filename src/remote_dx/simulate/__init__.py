"""``remote-dx simulate``: a county network's traffic through the hub's real ingest and workflow
code, so dashboards, tests and benchmarks have living data (issue 6)."""

from remote_dx.simulate.engine import (
    HOUR_WEIGHTS,
    WEEKDAY_WEIGHTS,
    Rates,
    SimulationReport,
    simulate,
)

__all__ = ["HOUR_WEIGHTS", "WEEKDAY_WEIGHTS", "Rates", "SimulationReport", "simulate"]
