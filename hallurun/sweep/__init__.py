"""Sweeps: many models over many tasks, one judge, one report, as HalluLens' paper compares models.

`spec` reads SPEC.toml into typed values; `layout` is the sweep's folder (one ordinary run folder per model and
task, the accepted spec, the grid's state); `drive` runs it on one event loop (each model's server launched once
for all its tasks and stopped before the next model's, then the judge loaded once for every run's stages);
`report` writes the table and the figures.
"""
