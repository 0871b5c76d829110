"""The flow's steps as Prefect tasks, one module per step, each a thin wrapper over `tasks.core` and
`tasks.aws`: `prepare` (pre-flight, earlier jobs, prepare, estimate), `run_jobs` (mapped shard jobs under
the quota), `repair`, `finalize` (results, summary) and `cancel` (the cancellation hook)."""
