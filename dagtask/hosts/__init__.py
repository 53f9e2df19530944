"""Host inventory and connectors: the hosts whose OCP agent the built-in templates operate.

Deliberately imports nothing, so that ``python -m dagtask.hosts.agent_stub`` pays only for the
top-level package. Import :mod:`dagtask.hosts.inventory`, :mod:`dagtask.hosts.connector` and
:mod:`dagtask.hosts.local` directly.
"""
