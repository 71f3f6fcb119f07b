"""How a change ships: the band's rollout template (strategy, steps, analysis in Argo Rollouts' terms),
the deploy order of several services, and when to start (the next window that avoids the traffic peak)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from agents.context import ChangeContext
from agents.policy import WEEKDAYS, Analysis, Policy, Schedule, Step, duration_seconds
from agents.vocabulary import BANDS, Band, Strategy


class RolloutPlan(BaseModel):
    strategy: Strategy
    template_band: Band = Field(
        description="the band whose template this is (a spent error budget uses the next)"
    )
    steps: list[Step]
    analysis: list[Analysis]
    bake_time_s: int
    deploy_order: list[str] = Field(description="services in deploy order: dependencies first")
    rollback_order: list[str] = Field(description="the reverse: dependants roll back first")
    deploy_at: datetime | None = Field(description="when to start (UTC); None: no slot within the lookahead")
    schedule_reasons: list[str] = Field(default_factory=list)


def next_band(band: Band) -> Band:
    return BANDS[min(BANDS.index(band) + 1, len(BANDS) - 1)]


def in_window(at: datetime, schedule: Schedule) -> bool:
    if not schedule.windows:
        return True
    day = WEEKDAYS[at.weekday()]
    return any(day in w.days and w.start <= at.time() < w.end for w in schedule.windows)


def peak_share(context: ChangeContext, services: list[str], hour: int) -> float | None:
    """The highest share of its weekly peak any of the services is forecast to carry `hour` hours on."""
    shares = []
    for service in services:
        state = context.service_states.get(service)
        if state is None or not state.traffic_peak or hour >= len(state.traffic_forecast):
            continue
        shares.append(state.traffic_forecast[hour] / state.traffic_peak)
    return max(shares) if shares else None


def deploy_slot(
    context: ChangeContext, services: list[str], band: Band, schedule: Schedule
) -> tuple[datetime | None, list[str]]:
    """The first hour from now that lies in a window (for bands that need one) and whose forecast
    traffic stays under the peak share, searched hour by hour up to the lookahead."""
    now = context.now
    needs_window = band in schedule.windows_for
    for hour in range(schedule.lookahead_hours):
        at = now if hour == 0 else now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=hour)
        if needs_window and not in_window(at, schedule):
            continue
        share = peak_share(context, services, hour)
        if share is not None and share > schedule.avoid_peak_share:
            continue
        reasons = []
        if hour:
            reasons.append(
                f"waits {_duration(at - now)} for " + ("a deploy window" if needs_window else "the next slot")
            )
        if share is not None:
            reasons.append(
                f"forecast traffic at {share:.0%} of the weekly peak (limit {schedule.avoid_peak_share:.0%})"
            )
        return at, reasons
    return None, [
        f"no deploy window below {schedule.avoid_peak_share:.0%} of peak traffic in the next "
        f"{schedule.lookahead_hours} h"
    ]


def plan_rollout(context: ChangeContext, band: Band, policy: Policy) -> RolloutPlan:
    """The rollout of `band`'s template; a service with little error budget left takes the next band's."""
    template_band = band
    low_budget = [
        s
        for s in context.services
        if (state := context.service_states.get(s)) is not None
        and state.error_budget_left is not None
        and state.error_budget_left < policy.environment.budget_low_share
    ]
    reasons = []
    if low_budget:
        template_band = next_band(band)
        reasons.append(
            f"error budget under {policy.environment.budget_low_share:.0%} for {', '.join(low_budget)}: "
            f"the {template_band} rollout"
        )
    template = policy.rollout[template_band]
    order = context.topology.deploy_order(context.services)
    deploy_at, slot_reasons = deploy_slot(context, context.services, template_band, policy.schedule)
    steps: list[Step] = list(template.steps)
    return RolloutPlan(
        strategy=template.strategy,
        template_band=template_band,
        steps=steps,
        analysis=list(template.analysis),
        bake_time_s=duration_seconds(template.bake_time),
        deploy_order=order,
        rollback_order=list(reversed(order)),
        deploy_at=deploy_at,
        schedule_reasons=reasons + slot_reasons,
    )


def _duration(span: timedelta) -> str:
    """A wait in hours and minutes (`12 h 38 min`), rounded up to the minute."""
    minutes = -(-int(span.total_seconds()) // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
