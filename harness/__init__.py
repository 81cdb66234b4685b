"""The wsnursery harness: fault injection, load, connection and stress runs (``python -m harness``).

An installed package of its own (``pip install 'wsnursery[harness]'``) that imports nothing
from the repository around it; ``benches/`` builds on it.

- ``cli``: the command line; each command's module is imported only when that command runs.
- ``reliability`` with ``streams`` (the message plan), ``proxy``, ``faults`` and ``wsframes``
  (the fault proxy), ``check`` (the end-to-end verdict): zero lost, duplicated, reordered;
  ``nodes``: a cluster of server processes on one Redis, killed and restarted (``--nodes``).
- ``load``, ``connect``, ``stress``: throughput, latency and connection runs on one asyncio process.
- ``bench``: the multi-process load client of the side-by-side benches (``python -m harness.bench``).
- ``rawws`` (a lean asyncio WebSocket client), ``servers`` (start and stop a server under test),
  ``machine`` (the machine header of every report), ``report`` (tables, progress, JSON).
"""
