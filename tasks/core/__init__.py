"""The library: Polars over plain data (sources, templates, model families, plan, prepare, collect,
answer cache, cost, run settings). No Prefect in here; S3 only through the client factory in `tasks.aws`."""
