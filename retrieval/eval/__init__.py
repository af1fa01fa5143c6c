"""Evaluation: BEIR-exact metrics and run files (``metrics``), significance tests, MTEB-style tasks and the mteb adapter."""
from retrieval.eval.metrics import evaluate, per_query, read_run, write_run
from retrieval.eval.significance import compare_runs, paired_t_test, randomization_test

__all__ = ["compare_runs", "evaluate", "paired_t_test", "per_query", "randomization_test", "read_run", "write_run"]
