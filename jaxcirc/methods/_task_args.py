"""`method(model, task)`: every discovery method also takes a `jaxcirc.tasks.Task`."""

from __future__ import annotations


def task_arguments(clean, corrupt, metric, *, needs_metric: bool = True):
    """`(clean, corrupt, metric)` from either the three or a `Task` given as `clean`."""
    if hasattr(clean, "clean") and hasattr(clean, "corrupt"):
        if corrupt is not None:
            raise TypeError("give a Task alone, or clean and corrupt tokens, not both")
        task = clean
        return task.clean, task.corrupt, metric if metric is not None else task.metric
    if corrupt is None:
        raise TypeError("give corrupt tokens (or a jaxcirc.tasks.Task as the second argument)")
    if needs_metric and metric is None:
        raise TypeError("give a metric: logits [batch, seq, d_vocab] -> scalar")
    return clean, corrupt, metric
