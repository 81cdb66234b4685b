"""Shared helpers for the wsnursery benches (client, server processes, machine header)."""
