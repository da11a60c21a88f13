"""FineServe: serve many mixed-precision LLMs on shared GPUs.

Packages: ``profiles`` (model catalog, precision, latency models), ``planner`` (capacity
model, ILP and greedy placement, plan files), ``cli`` (the ``fineserve`` command).
"""

__version__ = "0.1.0"
