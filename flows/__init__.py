"""Flow entry points. Importing the package prepares Prefect for plain-Python runs (see `_bootstrap`)."""

from flows.local.bootstrap import configure_local_prefect

configure_local_prefect()
