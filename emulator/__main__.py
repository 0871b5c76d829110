"""`python -m emulator`: serve Bedrock + moto on one port in the foreground and print the client settings."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading

from emulator.profile import PROFILE_ENV, load_profile

# Polars gives freed memory back to the OS after 0.5 s. Each job allocates and frees a file's worth of
# frames, and faulting those pages in again cost the endpoint a fifth of its time (bench/README.md), so
# this process keeps freed memory for 10 s. Set before Polars loads, and appended: a parent process that
# imported Polars passes its own default on in the same variable.
ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
ALLOCATOR_CONF = "dirty_decay_ms:10000,muzzy_decay_ms:10000"


def main(argv: list[str] | None = None) -> None:
    os.environ[ALLOCATOR_ENV] = ",".join(filter(None, [os.environ.get(ALLOCATOR_ENV), ALLOCATOR_CONF]))
    from emulator.server import start

    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument(
        "--profile", help=f"profile JSON file or text (default: ${PROFILE_ENV}, else defaults)"
    )
    parser.add_argument(
        "--time-scale", type=float, help="real seconds per emulated second (overrides the profile)"
    )
    parser.add_argument("--seed", type=int, help="fault seed (overrides the profile)")
    args = parser.parse_args(argv)

    profile = load_profile(args.profile)
    overrides = {k: v for k, v in (("time_scale", args.time_scale), ("seed", args.seed)) if v is not None}
    if overrides:
        profile = profile.replace(**overrides)
    server = start(args.host, args.port, profile)
    print(f"Bedrock emulator (with moto) listening on {server.url}")
    print("Point any AWS client at it with:")
    for key, value in server.env().items():
        print(f"  export {key}={value}")
    print(f"Profile: {json.dumps(profile.to_dict())}")
    print("Inspect: GET /_emulator/calls, GET /_emulator/stats; Ctrl-C to stop.", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
