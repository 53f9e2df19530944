"""Tests against real OpenSSH servers on loopback (see tests/ssh/sshd.py)."""
