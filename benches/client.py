"""The side-by-side load client against one running server: `harness.bench` (see its docstring).

    python benches/client.py run --url ws://127.0.0.1:PORT --scenario echo [--server-pid PID] [--quick]
    python benches/client.py compare [--frames 200000]

The same as `python -m harness.bench ...`; kept so the commands in benches/README.md work as written.
"""

import sys

from harness.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
