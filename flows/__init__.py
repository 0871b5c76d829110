"""Flow entry points. Importing the package prepares Prefect for plain-Python runs (see `_bootstrap`)."""

from flows._bootstrap import configure_local_prefect

configure_local_prefect()
