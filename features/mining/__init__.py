"""Mining of git history as domain logic: reading commits and diffs through git (`gitlog`), the
point-in-time change metrics of each commit (`commits`) and SZZ candidates of fixes (`szz`).
The jobs that drive them incrementally (progress, checkpoints, summaries) live in `pipelines/`."""
