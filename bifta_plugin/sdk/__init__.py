"""The FiftyOne layer: run_bifta, plan/checks, writing, results, labels, run records, Model adapter, analysis."""
