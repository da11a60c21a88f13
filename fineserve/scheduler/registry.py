"""Policy names -> classes; the one place that knows all three."""

from __future__ import annotations

from fineserve.scheduler.adaptive import AdaptivePolicy
from fineserve.scheduler.deadline import DeadlinePolicy
from fineserve.scheduler.estimator import ServiceEstimator
from fineserve.scheduler.fcfs import FcfsPolicy
from fineserve.scheduler.policy import Policy
from fineserve.scheduler.types import SchedulerConfig, SchedulerConfigError, SloTargets

POLICY_CLASSES: dict[str, type[Policy]] = {
    p.name: p for p in (FcfsPolicy, DeadlinePolicy, AdaptivePolicy)
}


def make_policy(slo: SloTargets, config: SchedulerConfig, est: ServiceEstimator) -> Policy:
    """Build the policy ``config.policy`` names.

    Raises:
        SchedulerConfigError: unknown policy name.
    """
    cls = POLICY_CLASSES.get(config.policy)
    if cls is None:
        raise SchedulerConfigError(
            f"scheduler.policy must be one of {', '.join(POLICY_CLASSES)}, got {config.policy!r}"
        )
    return cls(slo, config, est)
