"""Evaluation, stage by stage; one module per job:

* :mod:`~bench.evaluation.plan`: what one evaluation runs, as plain data (:class:`Plan`).
* :mod:`~bench.evaluation.targets`: a model with its points; its record in the store.
* :mod:`~bench.evaluation.walk`: one attack's walk over the eps grid on fixed, seeded batches.
* :mod:`~bench.evaluation.work`: the work that needs the model (checks, shards of the walk).
* :mod:`~bench.evaluation.pipeline`: the stages of one evaluation, written once.
* :mod:`~bench.evaluation.book`: the store's side of one evaluation (the only writer).
* :mod:`~bench.evaluation.local`: the in-process executor (``bench eval``, the API, quick).
* :mod:`~bench.evaluation.ray_executor`: the Ray executor (``--workers``, ``bench sweep``).
* :mod:`~bench.evaluation.outcome`: what an evaluation returns; :mod:`~bench.evaluation.table`:
  its terminal table.
* :mod:`~bench.evaluation.audit`: which checks run when; :mod:`~bench.evaluation.diagnostics`:
  the checks themselves; :mod:`~bench.evaluation.results`: estimates, intervals, worst case;
  :mod:`~bench.evaluation.transfer`: the cross-model transfer matrix.
"""
