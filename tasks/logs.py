"""One logger for code that runs inside a flow or task run, and also outside one (plain functions, tests)."""

import logging

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

LOGGER_NAME = "bedrock_batch_flows"


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The current Prefect run's logger (its lines show in the UI), else the project's standard logger."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(LOGGER_NAME)
