"""Runnable dagtask examples (see examples/README.md).

A regular package (not a namespace one) so that the handlers' dotted paths, e.g.
``examples.rotate_logs.ops.RotateAgentLogs``, always resolve to this folder once the repository
root is on ``sys.path``.
"""
