"""atheris entry point: the frame reader (see ``targets.frame_reader_input``).

Run from the repository root (not collected by pytest: its name does not start with test_):
    PYTHONPATH=$PWD:$PWD/tests/fuzz python tests/fuzz/fuzz_frame_reader.py -runs=1000000 -timeout=10 -rss_limit_mb=2048
"""

import sys

import atheris

with atheris.instrument_imports(include=["wsnursery", "targets"]):
    import targets


def main() -> None:
    atheris.Setup(sys.argv, lambda data: targets.frame_reader_input(data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
