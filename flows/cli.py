"""`python -m flows.batch_inference`: the flow as a plain-Python command.

Every flow parameter is a flag (`--model-id`, `--max-concurrent-jobs`, `--dry-run/--no-dry-run`...),
generated from the flow's signature so the two never drift apart. `--event FILE.json` takes the AWS
sample's execution input; flags given as well override it. `--local` starts the emulator in-process
(Bedrock + S3 + CloudWatch on one loopback port) and points the run at it; with no source it runs the
bundled sample. The last line printed is `results: <path>` (a local copy of the output Parquet).

A refused run (bad parameters, an unknown model, a missing bucket, an empty input...) prints one line on
stderr, `error: <what is wrong and what to do>`, and exits 2: the pre-flight checks run here before the
flow starts (the flow runs them again, for deployment runs), and later refusals (prepare's) keep their
tracebacks off the console. `--debug` (or BBF_DEBUG=1) prints the tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
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


def parameter_help(fn: Any) -> dict[str, tuple[str, str]]:
    """Parameter -> (group, description) from the flow's docstring: the text the deployment form shows.

    Each description starts with its group ("Source. CSV, Parquet..."), which orders the form."""
    import inspect

    from prefect.utilities.callables import parameter_docstrings

    described = {}
    for name, text in parameter_docstrings(inspect.getdoc(fn)).items():
        group, _, rest = " ".join(text.split()).partition(". ")
        described[name] = (group, rest)
    return described


def build_parser() -> argparse.ArgumentParser:
    import inspect

    from flows.batch_inference import batch_inference

    fn = batch_inference.fn
    parser = argparse.ArgumentParser(
        prog="python -m flows.batch_inference",
        description=(fn.__doc__ or "").strip().splitlines()[0],
        epilog="Every flag mirrors a flow parameter of the same name (dashes for underscores); the help "
               "texts are the deployment form's.",
    )
    hints = typing.get_type_hints(fn)
    described = parameter_help(fn)
    groups: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        group_name, text = described[name]
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        kind, extra = _flag_type(hints[name])
        flag = "--" + name.replace("_", "-")
        help_text = f"{text} (default: {param.default!r})".replace("%", "%%")
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=help_text, **extra)
    parser.add_argument("--event", type=Path, help="the AWS sample's execution input (a JSON file)")
    parser.add_argument("--local", action="store_true",
                        help="run offline against the bundled emulator (no AWS); with no source: the sample")
    parser.add_argument("--emulator-profile", help="emulator profile for --local: a JSON file or JSON text "
                        "(same as BEDROCK_EMULATOR_PROFILE)")
    parser.add_argument("--output-dir", type=Path, default=Path("output"),
                        help="where the local copy of the results goes: <output-dir>/<job_name_prefix>/")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a refused or failed run (also BBF_DEBUG=1)")
    return parser


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.core.config import from_event

    params: dict[str, Any] = {}
    if args.event:
        params.update(from_event(json.loads(args.event.read_text())))
    cli_only = {"event", "local", "emulator_profile", "output_dir", "debug"}
    params.update({k: v for k, v in vars(args).items() if k not in cli_only})
    if isinstance(name := params.get("aws_credentials"), str):  # a saved block: the flow loads it by reference
        slug = name if "/" in name else f"aws-credentials/{name}"
        params["aws_credentials"] = {"$ref": {"block_document_slug": slug}}
    if args.local and not any(params.get(k) for k in ("s3_uri", "input_path", "dataset_id")):
        for key, value in SAMPLE.items():
            params.setdefault(key, value)
    return params


def start_local(profile: str | None) -> Any:
    """Start the emulator and point this process's AWS settings at it."""
    from emulator import start
    from tasks.aws import AwsSettings, client
    from tasks.core.config import LOCAL_BUCKET

    server = start(port=0, profile=profile)
    os.environ.update(server.env())
    s3 = client("s3", AwsSettings.from_env())
    try:
        s3.create_bucket(Bucket=LOCAL_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    print(f"local endpoint: {server.url} (Bedrock emulator + moto), bucket s3://{LOCAL_BUCKET}", flush=True)
    return server


def copy_results(results_uri: str, destination: Path, aws: Any = None) -> int:
    """The run's result parts (as its manifest lists them) -> one local Parquet file (`aws`: the run's
    AwsSettings; default: the environment's)."""
    import polars as pl

    from tasks.aws import storage_options
    from tasks.core.collect import result_part_uris

    frame = pl.read_parquet(result_part_uris(results_uri, aws), storage_options=storage_options(aws))
    destination.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(destination)
    return frame.height


# The steps inside the flow's refusal block (flows/batch_inference.py): a ValueError there refuses the run.
REFUSING_TASKS = frozenset({"preflight", "adopt-earlier-jobs", "prepare", "estimate"})


class QuietRefusals(logging.Filter):
    """On the console (not the API's logs), without --debug: leave out what repeats a refusal.

    Those are the traceback a refusing task's ValueError is logged with, that task's `Finished in state
    Failed(...)` and the flow's; the CLI prints the reason itself, once. Any other error keeps its log."""

    def __init__(self) -> None:
        super().__init__()
        self.refused_task_runs: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        task_name, task_run = getattr(record, "task_name", None), str(getattr(record, "task_run_id", ""))
        if task_name in REFUSING_TASKS and record.exc_info and isinstance(record.exc_info[1], ValueError):
            self.refused_task_runs.add(task_run)
            return False
        if self.refused_task_runs and record.getMessage().startswith("Finished in state Failed"):
            return bool(task_name) and task_run not in self.refused_task_runs
        return True


def quiet_refusals() -> QuietRefusals:
    """Put a `QuietRefusals` on the console handlers (Prefect's, on the root logger)."""
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    if not any(isinstance(h, PrefectConsoleHandler) for h in logging.getLogger().handlers):
        setup_logging()
    quiet = QuietRefusals()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(quiet)
    return quiet


def refuse(err: BaseException, debug: bool) -> int:
    """A refused run: the traceback only when debugging, then one line; exit code 2."""
    import traceback

    from tasks.aws.preflight import refusal

    if debug:
        traceback.print_exception(err)
    reason = refusal(err) if isinstance(err, ValueError) else " ".join(str(err).split())
    print(f"error: {reason}", file=sys.stderr, flush=True)
    return 2


def preflight(params: dict[str, Any]) -> None:
    """The flow's parameters validated as Prefect validates them, then the flow's pre-flight checks."""
    from prefect.exceptions import ParameterTypeError

    from flows.batch_inference import batch_inference
    from tasks.aws.preflight import RunRefused, run_checks
    from tasks.core.config import config_from_params

    try:
        validated = batch_inference.validate_parameters(params)
    except ParameterTypeError as err:
        raise RunRefused(f"parameters: {err}") from err
    run_checks(config_from_params(validated))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("BBF_DEBUG", "").strip().lower() in ("1", "true", "yes")
    try:
        params = parameters(args)
    except (ValueError, OSError) as err:  # the --event file: unreadable, not JSON, unknown keys
        return refuse(err, debug)
    if args.local:
        from tasks.core.config import LOCAL_ROLE_ARN

        params.setdefault("role_arn", LOCAL_ROLE_ARN)
    elif not params.get("output_uri"):
        print("error: --output-uri s3://bucket/prefix is needed (or --local)", file=sys.stderr)
        return 2
    if not os.environ.get("PREFECT_API_URL"):  # Prefect will start an API server as our child: not an orphan
        from flows.local.watchdog import guard_children

        guard_children()
    server = start_local(args.emulator_profile) if args.local else None
    try:
        return run(params, args, debug)
    finally:
        if server is not None:
            server.stop()


def run_aws(params: dict[str, Any]) -> Any:
    """The AWS settings the run used: its `aws_credentials` block and `region`, else the environment's."""
    from tasks.aws import AwsSettings, credentials_block

    return AwsSettings.from_env(credentials=credentials_block(params.get("aws_credentials")),
                                region=params.get("region"))


def run(params: dict[str, Any], args: argparse.Namespace, debug: bool) -> int:
    from flows.batch_inference import batch_inference
    from tasks.aws.preflight import RunRefused
    from tasks.report import RunSummary, summary_text
    from tasks.steps.finalize import RunFailed

    try:
        preflight(params)  # before the flow: a refused run starts no Prefect server and logs nothing
    except ValueError as err:
        return refuse(err, debug)
    if not debug:
        quiet_refusals()
    code = 0
    try:
        result = batch_inference(**params)
        summary = RunSummary(**result)
    except RunRefused as err:  # found by the flow (prepare: duplicate ids, a missing template key...)
        return refuse(err, debug)
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
        copy_results(summary.results_uri, destination, run_aws(params))
        print(f"results: {destination}")
    return code
