"""`python -m flows.batch_inference`: the flow as a plain-Python command.

Every flow parameter is a flag (`--model-id`, `--max-concurrent-jobs`, `--dry-run/--no-dry-run`...),
generated from the flow's signature so the two never drift apart. `--event FILE.json` takes the AWS
sample's execution input; flags given as well override it. `--local` starts the emulator in-process
(Bedrock + S3 + CloudWatch on one loopback port) and points the run at it; with no source it runs the
bundled sample. The last line printed is `results: <path>` (a local copy of the output Parquet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
SAMPLE = {
    "input_path": str(REPO / "samples" / "simplecot_sample.jsonl"),
    "prompt_id": "question_answering",
    "job_name_prefix": "sample-qa",
}


def _flag_type(hint: Any) -> tuple[Any, dict[str, Any]]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if origin is Literal:
        return str, {"choices": list(typing.get_args(hint))}
    if hint is bool:
        return bool, {}
    if hint in (int, float, str):
        return hint, {}
    return str, {}


def build_parser() -> argparse.ArgumentParser:
    from flows.batch_inference import batch_inference

    parser = argparse.ArgumentParser(
        prog="python -m flows.batch_inference",
        description=(batch_inference.fn.__doc__ or "").strip().splitlines()[0],
        epilog="Every flag mirrors a flow parameter of the same name (dashes for underscores).",
    )
    fn = batch_inference.fn
    hints = typing.get_type_hints(fn)
    import inspect

    for name, param in inspect.signature(fn).parameters.items():
        kind, extra = _flag_type(hints[name])
        flag = "--" + name.replace("_", "-")
        help_text = f"(default: {param.default!r})"
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=help_text, **extra)
    parser.add_argument("--event", type=Path, help="the AWS sample's execution input (a JSON file)")
    parser.add_argument("--local", action="store_true",
                        help="run offline against the bundled emulator (no AWS); with no source: the sample")
    parser.add_argument("--emulator-profile", help="emulator profile for --local: a JSON file or JSON text "
                        "(same as BEDROCK_EMULATOR_PROFILE)")
    parser.add_argument("--output-dir", type=Path, default=Path("output"),
                        help="where the local copy of the results goes: <output-dir>/<job_name_prefix>/")
    return parser


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.config import from_event

    params: dict[str, Any] = {}
    if args.event:
        params.update(from_event(json.loads(args.event.read_text())))
    cli_only = {"event", "local", "emulator_profile", "output_dir"}
    params.update({k: v for k, v in vars(args).items() if k not in cli_only})
    if args.local and not any(params.get(k) for k in ("s3_uri", "input_path", "dataset_id")):
        for key, value in SAMPLE.items():
            params.setdefault(key, value)
    return params


def start_local(profile: str | None) -> Any:
    """Start the emulator and point this process's AWS settings at it."""
    from emulator import start
    from tasks.aws import AwsSettings, client
    from tasks.config import LOCAL_BUCKET

    server = start(port=0, profile=profile)
    os.environ.update(server.env())
    s3 = client("s3", AwsSettings.from_env())
    try:
        s3.create_bucket(Bucket=LOCAL_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    print(f"local endpoint: {server.url} (Bedrock emulator + moto), bucket s3://{LOCAL_BUCKET}", flush=True)
    return server


def copy_results(results_uri: str, destination: Path) -> int:
    """The run's result parts (as its manifest lists them) -> one local Parquet file."""
    import polars as pl

    from tasks.aws import storage_options
    from tasks.collect import result_part_uris

    frame = pl.read_parquet(result_part_uris(results_uri), storage_options=storage_options())
    destination.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(destination)
    return frame.height


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):  # Prefect will start an API server as our child: not an orphan
        from flows._watchdog import guard_children

        guard_children()
    params = parameters(args)
    server = None
    if args.local:
        server = start_local(args.emulator_profile)
        from tasks.config import LOCAL_ROLE_ARN

        params.setdefault("role_arn", LOCAL_ROLE_ARN)
    elif not params.get("output_uri"):
        print("error: --output-uri s3://bucket/prefix is needed (or --local)", file=sys.stderr)
        return 2
    from flows.batch_inference import batch_inference
    from tasks.report import RunSummary, summary_text
    from tasks.steps import RunFailed

    code = 0
    try:
        try:
            result = batch_inference(**params)
            summary = RunSummary(**result)
        except RunFailed as failed:
            summary, code = failed.summary, 1
            print(f"error: {failed}", file=sys.stderr)
        if summary.dry_run:
            print((summary.estimate or {}).get("text", ""))
            return 0
        print(summary_text(summary))
        if summary.results_uri:
            prefix = params.get("job_name_prefix") or "bedrock-batch"
            destination = (args.output_dir / prefix / f"results-{summary.run_key}.parquet").resolve()
            copy_results(summary.results_uri, destination)
            print(f"results: {destination}")
        return code
    finally:
        if server is not None:
            server.stop()
