"""Atomic writes: whole files, ordinary permissions, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.io import atomic_torch_save, atomic_write_bytes, atomic_write_json


def test_atomic_writes_give_ordinary_permissions_and_leave_no_temporary_files(
    tmp_path: Path,
) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"abc")
        atomic_write_json(tmp_path / "b.json", {"k": 1})
        atomic_torch_save(tmp_path / "c.pt", {"w": torch.arange(3)})
    finally:
        os.umask(old)
    for name in ("a.bin", "b.json", "c.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json", "c.pt"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"v": 1})
    try:
        atomic_write_json(target, {"v": object()})  # not JSON-serialisable: fails before writing
    except TypeError:
        pass
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
