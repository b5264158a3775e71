"""Sweeps: a whole study from one file, run on Ray.

* :mod:`~bench.sweep.spec`: the sweep file, checked, as jobs (never imports Ray).
* :mod:`~bench.sweep.work`: what training workers do (train or resume, hand the files back).
* :mod:`~bench.sweep.driver`: the driver: training tasks, then each checkpoint's evaluations on
  the one evaluation pipeline (:mod:`bench.evaluation.ray_executor`).
"""
