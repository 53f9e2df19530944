"""Hypothesis profiles for the suite, and budgets that follow them.

``DAGTASK_HYPOTHESIS_PROFILE`` picks the profile (tests/conftest.py loads it):

- ``ci`` (the default): hypothesis's usual 100 examples, no deadline (CI machines are slow and
  shared), the ``@reproduce_failure`` blob printed with every failure.
- ``long``: ten times the examples and four times the stateful steps, for bug hunting.

A test that sets ``@settings(max_examples=N)`` overrides the profile's budget; write
``max_examples=examples(N)`` (and ``stateful_step_count=steps(N)``) so that it grows under
``long`` too.

``DAGTASK_HYPOTHESIS_SEED`` replays a run: the seed every run prints in its report header.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_VAR = "DAGTASK_HYPOTHESIS_PROFILE"
SEED_VAR = "DAGTASK_HYPOTHESIS_SEED"
DEFAULT_PROFILE = "ci"
PROFILES = ("ci", "long")
LONG_EXAMPLES = 10
LONG_STEPS = 4


def register_profiles() -> None:
    """Register the ``ci`` and ``long`` profiles with hypothesis (idempotent)."""
    settings.register_profile(
        "ci",
        max_examples=100,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "long",
        parent=settings.get_profile("ci"),
        max_examples=100 * LONG_EXAMPLES,
        stateful_step_count=50 * LONG_STEPS,
    )


def requested_profile() -> str:
    """The profile ``$DAGTASK_HYPOTHESIS_PROFILE`` names (``ci`` when unset).

    Raises ValueError, with what to write instead, for a name that is not a profile.
    """
    name = os.environ.get(PROFILE_VAR, "").strip() or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ValueError(
            f"{PROFILE_VAR}={name!r} is not a hypothesis profile of this suite; "
            f"use one of {', '.join(PROFILES)} (or unset it for {DEFAULT_PROFILE})"
        )
    return name


def requested_seed() -> int | None:
    """The seed ``$DAGTASK_HYPOTHESIS_SEED`` gives, or None when unset.

    Raises ValueError, with an example, for a value that is not an integer.
    """
    text = os.environ.get(SEED_VAR, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{SEED_VAR}={text!r} is not an integer; write the seed a run printed, "
            f"e.g. {SEED_VAR}=12345 (or unset it for a random seed)"
        ) from None


def _long() -> bool:
    current = settings.get_current_profile_name()
    if current in PROFILES:
        return current == "long"
    # Not loaded yet (imported outside pytest, or before pytest_configure): go by the variable.
    return os.environ.get(PROFILE_VAR, "").strip() == "long"


def examples(n: int) -> int:
    """A test's own ``max_examples``: ``n``, or 10 * ``n`` under the ``long`` profile."""
    return n * LONG_EXAMPLES if _long() else n


def steps(n: int) -> int:
    """A state machine's own ``stateful_step_count``: ``n``, or 4 * ``n`` under ``long``."""
    return n * LONG_STEPS if _long() else n
