"""`python -m pipelines` is the `awo` command."""

from pipelines.cli import main

main()
