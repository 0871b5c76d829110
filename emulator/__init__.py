"""A local Amazon Bedrock (batch inference control plane + runtime) on one endpoint with moto behind it.

    from emulator import start
    with start(profile={"time_scale": 1e-4}) as server:
        os.environ.update(server.env())   # boto3 / Polars now talk to the emulator

See emulator/README.md for the profile keys and the deterministic replies.
"""

from emulator.profile import Profile, load_profile
from emulator.server import EmulatorServer, start

__all__ = ["EmulatorServer", "Profile", "load_profile", "start"]
