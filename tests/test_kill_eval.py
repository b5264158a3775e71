"""Kill -9 of a real ``bench eval`` process at three points, then the same command again: the
final per-point flags equal an undisturbed run's, no in-progress batch is left, and SQLite's
integrity check passes. The machinery is ``scripts/kill_eval.py`` (which does ten random kills
and prints a table); this test kills at fixed stages of the store's progress instead of times,
so that each kill lands inside the evaluation whatever the machine's speed."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import pytest
from conftest import load_script


def _script() -> ModuleType:
    return load_script("kill_eval")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Any, dict[tuple, tuple]]:
    """The world (fewer PGD steps than the script's, to stay short) and an undisturbed run."""
    ke = _script()
    world = ke.make_world(tmp_path_factory.mktemp("kill"))
    world.steps = 20
    ref = world.root / "reference.sqlite"
    ke.run_to_end(world, ref)
    reference = ke.flags(ref)
    assert len(reference) == 10  # fgsm and pgd at 0, 2/255, 4/255, 6/255, 8/255
    assert ke.integrity(ref) == "ok"
    return ke, world, reference


#: When to kill, from the store's (result rows, kept batches): after the first kept batch (inside
#: the first attacked step), in PGD's first steps, and at PGD's last step.
STAGES: dict[str, Callable[[tuple[int, int]], bool]] = {
    "first-batch": lambda p: p[1] >= 1,
    "mid-pgd": lambda p: p[0] >= 6 and p[1] >= 2,
    "last-step": lambda p: p[0] >= 9 and p[1] >= 1,
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_mid_eval_then_rerun(
    stage: str, setup: tuple[ModuleType, Any, dict[tuple, tuple]]
) -> None:
    ke, world, reference = setup
    db = world.root / f"killed-{stage}.sqlite"
    kill = ke.kill_and_rerun(world, db, None, reference, when=STAGES[stage])
    assert not kill.finished_before_kill, "the kill came after the evaluation had finished"
    assert kill.results_at_kill < len(reference)  # killed mid-way: rows were still to come
    assert kill.same_flags, "flags after the rerun differ from the undisturbed run"
    assert kill.rows == len(reference) and kill.batches_left == 0
    assert kill.integrity == "ok"
