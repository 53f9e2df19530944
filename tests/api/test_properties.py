"""Properties of the pure parts of the API: the rate limiter and the password KDF."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dagtask.api.limits import RateLimit, RateLimiter
from dagtask.users import hash_password, verify_password
from tests.api.support import CHEAP
from tests.hypo import examples


@given(
    limit=st.integers(1, 5),
    window=st.integers(1, 10),
    steps=st.lists(st.integers(0, 4), min_size=1, max_size=60),
)
def test_each_window_admits_at_most_the_limit_and_refuses_only_when_full(
    limit: int, window: int, steps: list[int]
) -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimit(limit=limit, window=window), clock=lambda: now[0])
    admitted: dict[float, int] = {}  # window end -> requests admitted in that window
    for step in steps:
        now[0] += step
        quota = limiter.hit("user")
        assert quota is not None and 1 <= quota.reset <= window
        end = now[0] + quota.reset  # whole seconds, so this is exactly the window's end
        if quota.allowed:
            admitted[end] = admitted.get(end, 0) + 1
        else:
            assert admitted.get(end, 0) == limit, "refused while the window had room"
        assert admitted.get(end, 0) <= limit
        assert quota.remaining == limit - admitted.get(end, 0)


@settings(max_examples=examples(25), deadline=None)
@given(password=st.text(min_size=1, max_size=40), other=st.text(min_size=1, max_size=40))
def test_a_hash_verifies_its_password_and_no_other(password: str, other: str) -> None:
    encoded = hash_password(password, CHEAP)
    assert verify_password(password, encoded)
    assert verify_password(other, encoded) is (other == password)
