"""Suite-wide test settings.

Hypothesis's per-example deadline (200 ms) is a timing assertion: on a shared 2-core CI
machine a cold first example can take longer (a property test in tests/bench failed CI that
way at 259 ms, then ran in 9 ms). Speed belongs in bench/, so no test has a deadline.
"""

from hypothesis import settings

settings.register_profile("fineserve", deadline=None)
settings.load_profile("fineserve")
