"""Closed vocabularies: the words bench stores and compares, each spelled once. They are
``StrEnum`` members, so each equals (and is stored as) its plain string value."""

from __future__ import annotations

from enum import StrEnum


class Walk(StrEnum):
    """How an attack walks the eps grid (:mod:`bench.evaluation.walk`)."""

    UP = "up"
    DOWN = "down"
    BISECT = "bisect"


class SourceKind(StrEnum):
    """Where an evaluated model came from (:mod:`bench.sources`)."""

    CHECKPOINT = "checkpoint"
    FACTORY = "factory"
    ROBUSTBENCH = "robustbench"
    MODULE = "module"


class AttackKind(StrEnum):
    """How an attack relates to eps (:mod:`bench.attacks`)."""

    BOUNDED = "bounded"
    MINIMUM_NORM = "minimum-norm"


class Check(StrEnum):
    """A diagnostic check's name, as stored in the diagnostics table (:mod:`bench.evaluation`)."""

    RANDOMIZED = "randomized"
    PROBABILITIES = "probabilities"
    GRADIENTS = "gradients"
    SQUARE_VS_WHITEBOX = "square-vs-whitebox"
    ITERATIVE_VS_SINGLE_STEP = "iterative-vs-single-step"
    LARGE_BUDGET = "large-budget"
    LOSS_TRACE = "loss-trace"
    TRANSFER = "transfer"
    WALK_INFERENCE = "walk-inference"
    BLACK_BOX_PROBE = "black-box-probe"
    AUTOATTACK_CHECKS = "autoattack-checks"
    TRANSFER_MATRIX = "transfer-matrix"
