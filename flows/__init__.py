"""Flow entry points. Importing the package prepares Prefect for plain-Python runs (see `local/bootstrap`)
and records this process's concurrency leases, so that a run can give back a dead run's slots
(`local/leases`)."""

from flows.local.bootstrap import configure_local_prefect

configure_local_prefect()

from flows.local.leases import install as _install_lease_journal  # noqa: E402 (after the settings above)

_install_lease_journal()
