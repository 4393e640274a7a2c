"""The chaos suite: the real processes against real servers under combined, seeded faults.

Every test here is marked ``slow`` (tests/chaos/conftest.py): CI runs them, ``-m 'not slow'``
skips them locally. ``--events N`` and ``--chaos-seed S`` (tests/conftest.py) run them bigger or
with another schedule by hand.
"""
