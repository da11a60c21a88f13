"""How plans compare under an instance's objective, the ILP's stage order in one key.

Used to pick the greedy warm start and to make sure the ILP never returns a plan its warm
start beats. Placed traffic always comes first, counted as the ILP's first stage counts it:
the served fraction summed over models.
"""

from __future__ import annotations

from fineserve.planner.schema import Instance, Objective, Plan


def rank(inst: Instance, plan: Plan) -> tuple[float, ...]:
    """Lexicographic key of ``plan`` under ``inst``'s objective; smaller is better. Values
    are rounded to the ILP's resolution so that its integer rounding is no loss."""
    unserved = round(sum(u.rate_rps / inst.model(u.model).rate_rps for u in plan.unplaced), 6)
    head = round(min(plan.min_headroom, inst.settings.headroom_cap), 3)
    obj = inst.settings.objective
    if obj is Objective.MAX_HEADROOM:
        return (unserved, -head, plan.cost)
    if obj is Objective.WEIGHTED:
        return (unserved, plan.cost - inst.settings.headroom_weight * head)
    if obj is Objective.MIN_GPUS:
        return (unserved, plan.cost)
    return (unserved, plan.cost, -head)
