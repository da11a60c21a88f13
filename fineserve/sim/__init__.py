"""Discrete-event simulation of a plan serving a trace (what-if analysis before deploying)."""
