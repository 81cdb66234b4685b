"""The wsnursery harness: fault injection, load, connection and stress runs."""
