"""Who to tell about a planned outage, when, and what: the lists for the customer and outage systems.

From the meter groups of the site (each group's customer class is its `meter_type`; its
critical customers are its `critical_meters`) and the backup plan chosen for the window:

* customers on sections the plan **sheds** hear of an interruption for the whole window;
* customers on the transformer's other sections, and on sections the plan moves onto another
  source, hear of a possible brief interruption when the switching is done (at the window's
  start and end);
* critical customers (a hospital, a water works) are listed first and told `critical_notice_h`
  ahead (72 h by default), everyone else `customer_notice_h` ahead (48 h).

Which of a shed section's non-critical customers are shed is the plan's count taken in meter
order, group by group in proportion to their size; the AMI head-end disconnects those meters
for the window and reconnects them after (remote connect/disconnect).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import MeterGroupConfig


@dataclass(frozen=True, slots=True)
class NoticeSettings:
    critical_notice_h: float = 72.0
    customer_notice_h: float = 48.0


def _ids(group: MeterGroupConfig) -> list[str]:
    return [group.meter_id(n) for n in range(group.first, group.first + group.count)]


def notifications(
    groups: Sequence[MeterGroupConfig],
    section_groups: Mapping[str, Sequence[str]],
    plan: Mapping[str, Any],
    window: Mapping[str, Any],
    *,
    work_order: str,
    asset: str,
    settings: NoticeSettings | None = None,
) -> dict[str, Any]:
    """The notification lists for one work order's window and plan (plain data, to publish)."""
    s = settings or NoticeSettings()
    by_id = {g.id: g for g in groups}
    interrupted = list(plan.get("restored_sections", [])) + list(plan.get("left_out_sections", []))
    moved = list(plan.get("brief_interruption_sections", []))
    shed = {item["section"]: int(item["customers"]) for item in plan.get("shed", [])}
    left_out = set(plan.get("left_out_sections", []))
    start, end = float(window["start"]), float(window["end"])
    label = str(window.get("label", ""))
    duration_h = (end - start) / 3600.0
    critical: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for section in [*interrupted, *moved]:
        gids = [g for g in section_groups.get(section, ()) if g in by_id]
        noncritical_total = sum(by_id[g].count - len(by_id[g].critical_meters) for g in gids)
        to_shed = shed.get(section, 0)
        taken = 0
        for k, gid in enumerate(gids):
            group = by_id[gid]
            crit = set(group.critical_meters)
            rest = [m for m in _ids(group) if m not in crit]
            if k == len(gids) - 1:
                n_shed = to_shed - taken
            else:
                n_shed = math.floor(to_shed * len(rest) / noncritical_total) if noncritical_total else 0
            n_shed = max(0, min(n_shed, len(rest)))
            taken += n_shed
            whole = section in left_out
            for meter in sorted(crit):
                critical.append(
                    {
                        "meter": meter,
                        "group": gid,
                        "transformer": group.connected_transformer,
                        "section": section,
                        "customer_class": group.meter_type,
                        "impact": "interruption" if whole else "brief_interruption",
                        "lead_h": s.critical_notice_h,
                        "notify_at": start - s.critical_notice_h * 3600.0,
                        "message": _message(asset, label, duration_h, whole, critical=True),
                    }
                )
            for impact, meters in (
                ("interruption", rest if whole else rest[:n_shed]),
                ("brief_interruption", [] if whole else rest[n_shed:]),
            ):
                if not meters:
                    continue
                others.append(
                    {
                        "group": gid,
                        "transformer": group.connected_transformer,
                        "section": section,
                        "customer_class": group.meter_type,
                        "impact": impact,
                        "count": len(meters),
                        "meters": meters,
                        "lead_h": s.customer_notice_h,
                        "notify_at": start - s.customer_notice_h * 3600.0,
                        "message": _message(asset, label, duration_h, impact == "interruption", critical=False),
                    }
                )
    return {
        "work_order": work_order,
        "asset": asset,
        "plan": plan.get("plan"),
        "window": {"start": start, "end": end, "label": label, "duration_h": duration_h},
        "critical": critical,
        "customers": others,
        "critical_notified": len(critical),
        "customers_notified": len(critical) + sum(g["count"] for g in others),
        "interrupted_for_the_window": sum(g["count"] for g in others if g["impact"] == "interruption")
        + sum(1 for c in critical if c["impact"] == "interruption"),
    }


def _message(asset: str, label: str, duration_h: float, whole: bool, *, critical: bool) -> str:
    what = f"Planned maintenance of {asset}, {label}, estimated duration {duration_h:.0f} hours."
    if whole:
        return what + " Your supply will be interrupted for the duration."
    if critical:
        return what + (
            " Your supply is kept through backup switching; a brief interruption is possible at the "
            "start and the end. Please have your standby supply ready."
        )
    return what + " A brief interruption is possible at the start and the end, when the network is switched."
