"""`python tests/e2e/serve_flow.py NAME`: serve the flow (a runner) for the cancellation fault test."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if __name__ == "__main__":
    from flows.batch_inference import batch_inference

    batch_inference.serve(name=sys.argv[1], pause_on_shutdown=False)
