"""``fineserve profile``: measure latency profiles with real vLLM engines (docs/profiler.md).

Two sides, two interpreters. The parent (``runner``, ``grid``, ``store``, ``modeldir``,
``mps_daemon``, ``interference``) runs in the project's environment and plans, resumes and
writes profiles. The engine worker (``worker``, ``engine``) runs in the environment that has
vLLM, one process per (model, precision, tp, SM share), and imports only the standard library,
vLLM and the stdlib-only ``records`` and ``stats`` modules.
"""
