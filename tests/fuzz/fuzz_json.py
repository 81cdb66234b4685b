"""atheris entry point: the json (see ``targets.json_input``).

Run from the repository root (not collected by pytest: its name does not start with test_):
    PYTHONPATH=$PWD:$PWD/tests/fuzz python tests/fuzz/fuzz_json.py -runs=1000000 -timeout=10 -rss_limit_mb=2048
"""

import sys

import atheris

with atheris.instrument_imports(include=["wsnursery", "targets"]):
    import targets


def main() -> None:
    atheris.Setup(sys.argv, lambda data: targets.json_input(data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
