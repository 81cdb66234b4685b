"""The side-by-side load client: drives any server that speaks the bench subset of wsnursery
protocol v1 (`/echo`, and `welcome`/`subscribe`/`publish` on `/`).

``benches/side_by_side.py`` runs it against wsnursery and its peers; ``python -m harness.bench``
(or ``python benches/client.py``) runs it against one server.

Load comes from several worker PROCESSES (default 2) so that one Python process is not the
ceiling; the coordinating process owns the publisher in the fan-out scenario and samples CPU
(psutil) of the server, of every worker and of itself over the measured window, so a report can
say when the client, not the server, was the bottleneck. Latencies go to HdrHistogram
(microseconds). Connections use `harness.rawws`, a lean asyncio client (see
`python -m harness.bench compare` for why).

Scenarios (see benches/README.md):
  fanout   1 publisher -> N subscribers on one channel; deliveries/s measured at subscribers
  fanout_acks  the same, but every subscriber subscribes with `"ack": true` and sends one cumulative
           `ack` per read (the reliable path; only wsnursery speaks acks)
  echo     N connections doing request/response on /echo; round trips/s
  connect  open handshake + closing handshake, C at a time; connections/s
  idle     N idle connections on / held with heartbeats on; server RSS delta / N

Modules, one job each:
  params       scenario names, `Params` (every size and bound of a run), histogram helpers
  workers      the worker processes: one async function per scenario, and the pipe to the coordinator
  coordinator  `run_scenario`: starts the workers, paces the publisher, samples CPU, builds the result
  cli          `run` and `compare` (`python -m harness.bench --help`)
  altclients   `compare`: which asyncio client receives small frames fastest
"""
