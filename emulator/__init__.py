"""A local Amazon Bedrock (batch inference control plane + runtime) on one endpoint with moto behind it.

    from emulator import start
    with start(profile={"time_scale": 1e-4}) as server:
        os.environ.update(server.env())   # boto3 / Polars now talk to the emulator

See emulator/README.md for the profile keys and the deterministic replies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emulator.profile import Profile, load_profile

if TYPE_CHECKING:
    from emulator.server import EmulatorServer, start

__all__ = ["EmulatorServer", "Profile", "load_profile", "start"]


def __getattr__(name: str) -> Any:
    # The server (and with it Polars) loads on first use, so that `python -m emulator` can tune Polars'
    # allocator before Polars starts (emulator/__main__.py).
    if name in ("EmulatorServer", "start"):
        from emulator import server

        return getattr(server, name)
    raise AttributeError(f"module 'emulator' has no attribute {name!r}")
