"""Local-only helpers: what a plain-Python run needs that a Prefect server and AWS would otherwise give."""
