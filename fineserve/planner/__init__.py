"""Placement: capacity model, ILP (OR-Tools CP-SAT, PuLP/CBC), greedy baselines, plan files.

Every method returns the same ``Plan`` and every plan goes through ``validate_plan``.
"""
