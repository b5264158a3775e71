"""bench.sources: checkpoints, factories, RobustBench zoo entries and modules as one Source.

No test touches the network: RobustBench weights are written into robustbench's own layout in
tmp_path first, and loads that could download are made with ``download=False``.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import factories  # tests/ is on sys.path under pytest (no __init__.py: rootdir-relative import)
import pytest
import safetensors.torch
import torch
from torch import nn

from bench.data import dataset_info
from bench.errors import UnknownNameError, UsageError
from bench.models import create_model
from bench.sources import (
    Source,
    default_zoo_dir,
    from_checkpoint,
    from_factory,
    from_module,
    from_robustbench,
    parse_spec,
    plain_name,
    zoo_entries,
)
from bench.weights import fingerprint_model, fingerprint_state

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FILE_SPEC = f"{TESTS / 'factories.py'}:tiny_fmnist"


def _usage(fn: Callable[..., Any], *args: Any, match: str, **kwargs: Any) -> str:
    """Call ``fn``; it must raise a one-line UsageError matching ``match``."""
    with pytest.raises(UsageError, match=match) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def _assert_source(src: Source, kind: str, dataset: str, num_classes: int) -> None:
    assert src.kind == kind and src.dataset == dataset
    assert not src.model.training
    assert all(p.device.type == "cpu" for p in src.model.parameters())
    assert src.fingerprint == fingerprint_model(src.model)
    assert {"dataset", "model", "defense"} <= set(src.config) and src.config["dataset"] == dataset
    json.dumps(src.config), json.dumps(src.run)  # JSON-serialisable
    info = dataset_info(dataset)
    with torch.no_grad():
        out = src.model(torch.rand(3, info.channels, info.image_size, info.image_size))
    assert out.shape == (3, num_classes)


class _Evil:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return os.system, (f"touch {self.marker}",)


# ----------------------------------------------------------------------------- checkpoint, module


def _write_checkpoint(root: Path) -> tuple[Path, nn.Module]:
    """A finished bench checkpoint in the documented format: safetensors weights, config, run."""
    info = dataset_info("fashion-mnist")
    torch.manual_seed(0)
    model = create_model(
        "cnn", channels=1, num_classes=10, image_size=28, mean=info.mean, std=info.std
    )
    run_dir = root / "standard-cnn"
    run_dir.mkdir(parents=True)
    config = {
        "run_id": "standard-cnn",
        "dataset": "fashion-mnist",
        "model": "cnn",
        "defense": "standard",
        "defense_params": {},
        "epochs": 1,
        "dataset_info": {
            "channels": 1,
            "num_classes": 10,
            "image_size": 28,
            "mean": list(info.mean),
            "std": list(info.std),
        },
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(run_dir / "weights.safetensors"),
    )
    (run_dir / "run.json").write_text(json.dumps({"complete": True, "train_seconds": 1.5}))
    return run_dir, model


def test_from_checkpoint(tmp_path: Path) -> None:
    run_dir, model = _write_checkpoint(tmp_path)
    src = from_checkpoint(run_dir)
    _assert_source(src, "checkpoint", "fashion-mnist", 10)
    assert (src.run_id, src.path) == ("standard-cnn", str(run_dir.resolve()))
    assert src.fingerprint == fingerprint_model(model)
    assert src.config["defense"] == "standard" and src.run["train_seconds"] == 1.5
    _usage(from_checkpoint, tmp_path / "nowhere", match="does not exist")


def test_from_module(tmp_path: Path) -> None:
    model = factories.tiny_fmnist().train()
    src = from_module(model, "fashion-mnist", "my-net.v2")
    _assert_source(src, "module", "fashion-mnist", 10)
    assert src.model is model and src.run_id == "my-net.v2"
    assert src.config["model"] == "TinyCNN" and src.config["defense"] == "external"
    _usage(from_module, model, "cifar10", "x", match=r"can't take cifar10 images \[2, 3, 32, 32\]")
    _usage(from_module, "not a model", "mnist", "x", match="str, not a torch.nn.Module")
    _usage(from_module, model, "mnist", "a/b", match="plain name.*'a-b'")
    _usage(from_module, model, "mnist", "", match="plain name")
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        from_module(model, "imagenet", "x")


def test_plain_name_and_spec_parsing() -> None:
    assert plain_name("my model/v1") == "my-model-v1" and plain_name("../..") == "model"
    assert parse_spec("pkg.mod:fn") == ("pkg.mod", "fn", False)
    assert parse_spec("dir/f.py:Cls.build") == ("dir/f.py", "Cls.build", True)
    assert parse_spec(r"C:\m\f.py:fn") == (r"C:\m\f.py", "fn", True)  # the last colon splits


# ----------------------------------------------------------------------------- factories


@pytest.mark.parametrize(
    "spec",
    [
        "factories:tiny_fmnist",
        FILE_SPEC,
        "tests/factories.py:tiny_fmnist",
        "factories:Builders.tiny",
    ],
)
def test_factory_spec_forms(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the relative path form is relative to the working directory
    src = from_factory(spec, None, "fashion-mnist")
    _assert_source(src, "factory", "fashion-mnist", 10)
    assert src.fingerprint == fingerprint_model(factories.tiny_fmnist())  # same seeded weights
    assert src.run_id == ("tiny" if spec.endswith("Builders.tiny") else "tiny_fmnist")
    assert src.path == spec
    assert src.config == {
        "factory": spec,
        "weights": None,
        "dataset": "fashion-mnist",
        "model": spec,
        "defense": "external",
        "run_id": src.run_id,
    }


def test_dotted_package_spec_hints_at_the_path_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dotted spec whose module can't be imported but whose file exists here (as tests/, no
    package, whose name robustbench's wheel even takes): the error names the spec that works,
    and that spec works."""
    folder = tmp_path / "not_a_package"
    folder.mkdir()
    (folder / "factories.py").write_text((REPO / "tests" / "factories.py").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        UsageError, match=r"use --model-factory not_a_package/factories\.py:tiny_fmnist"
    ):
        from_factory("not_a_package.factories:tiny_fmnist", None, "mnist")
    src = from_factory("not_a_package/factories.py:tiny_fmnist", None, "mnist")
    assert src.run_id == "tiny_fmnist" and src.fingerprint == fingerprint_model(
        factories.tiny_fmnist()
    )


def test_factory_keywords_and_name() -> None:
    src = from_factory("factories:sized", None, "cifar100", name="sized-c100")
    _assert_source(src, "factory", "cifar100", 100)
    assert src.run_id == "sized-c100"


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    for p in model.parameters():
        nn.init.normal_(p)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("form", ["plain", "state_dict", "model", "module-prefix", "safetensors"])
def test_factory_weights(form: str, tmp_path: Path) -> None:
    state = _state(factories.tiny_fmnist())
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pth")
    if form == "safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        obj: Any = {
            "plain": state,
            "state_dict": {"state_dict": state, "epoch": 3},
            "model": {"model": state, "optimizer": {"lr": 0.1}},
            "module-prefix": {f"module.{k}": v for k, v in state.items()},
        }[form]
        torch.save(obj, path)
    src = from_factory("factories:tiny_fmnist", str(path), "fashion-mnist")
    _assert_source(src, "factory", "fashion-mnist", 10)
    assert src.fingerprint == fingerprint_state(state)
    assert src.run_id == "tiny_fmnist-w" and src.config["weights"] == str(path.resolve())


@pytest.mark.parametrize(
    ("spec", "dataset", "match"),
    [
        (
            "no_such_module_xyz:f",
            "mnist",
            r"module 'no_such_module_xyz' can't be imported \(ModuleNotFoundError",
        ),
        (
            "factories:missing",
            "mnist",
            "has no attribute 'missing'; callables there: .*tiny_fmnist",
        ),
        ("factories:NOT_CALLABLE", "mnist", "NOT_CALLABLE is a int, not callable"),
        ("factories:raises", "mnist", "raised ValueError: boom"),
        ("factories:not_a_module", "mnist", "returned a dict, not a torch.nn.Module"),
        ("factories:wrong_shape", "fashion-mnist", r"shape \(2, 7\).*expected \(2, 10\)"),
        (
            "factories:tiny_fmnist",
            "cifar100",
            r"can't take cifar100 images \[2, 3, 32, 32\]: RuntimeError",
        ),
        ("factories:tuple_output", "mnist", "returns a tuple, not a tensor of logits"),
        ("factories:nan_logits", "mnist", "non-finite logits"),
        ("tests/no_such_file.py:f", "mnist", "file tests/no_such_file.py does not exist"),
        ("nocolon", "mnist", "must be written package.module:function or path/to/file.py:function"),
        ("pkg.mod:", "mnist", "must be written"),
        (":f", "mnist", "must be written"),
        ("a b:f", "mnist", "must be written"),
        ("pkg:1f", "mnist", "must be written"),
    ],
)
def test_factory_errors(
    spec: str, dataset: str, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    _usage(from_factory, spec, None, dataset, match=match)


def test_factory_module_whose_own_import_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = _usage(
        from_factory, "needs_dep:f", None, "mnist", match="No module named 'no_such_dependency_xyz'"
    )
    assert "PYTHONPATH" not in msg


def test_default_zoo_dir_follows_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert default_zoo_dir() == tmp_path.resolve() / "robustbench-models"
    _usage(
        from_robustbench,
        ZOO_NAME,
        "Linf",
        "cifar10",
        download=False,
        match=f"not found at {tmp_path.resolve()}/robustbench-models/cifar10/Linf/{ZOO_NAME}.pt",
    )


def test_factory_file_that_fails_to_import(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\nraise RuntimeError('half-written module')\n")
    _usage(
        from_factory,
        f"{bad}:f",
        None,
        "mnist",
        match="can't be imported .RuntimeError: half-written",
    )
    (tmp_path / "notes.txt").write_text("x")
    _usage(from_factory, f"{tmp_path / 'notes.txt'}:f", None, "mnist", match="not a Python file")


def _bad_weights(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "w.pt"
    if kind == "garbage":
        path.write_bytes(b"\x80\x04 not really a pickle")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    elif kind == "not-tensors":
        torch.save({"state_dict": {"a": 1}}, path)
    elif kind == "misfit":
        torch.save(factories.wrong_shape().state_dict(), path)
    elif kind == "bad-safetensors":
        path = tmp_path / "w.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    elif kind == "whole-model":
        torch.save(factories.tiny_fmnist(), path)
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("missing", "weights file .*w.pt does not exist"),
        ("directory", "is not a file"),
        ("garbage", r"can't be read: not a valid weights pickle \(Unsupported operand"),
        ("empty", "can't be read: EOFError"),
        ("list", "hold a list, not a state dict"),
        ("whole-model", r"asks for factories.TinyCNN; refused .*save model.state_dict\(\)"),
        ("not-tensors", r"hold a dict with keys \['state_dict'\], not a state dict"),
        (
            "misfit",
            r"weights don't fit model factories:tiny_fmnist: .*shape mismatches "
            r".*head.weight \(7, 32\) vs \(10, 32\)",
        ),
        ("bad-safetensors", "w.safetensors can't be read"),
    ],
)
def test_factory_weight_errors(kind: str, match: str, tmp_path: Path) -> None:
    path = _bad_weights(tmp_path, kind)
    _usage(from_factory, "factories:tiny_fmnist", str(path), "fashion-mnist", match=match)


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_weights_refused_nothing_executed(how: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    _usage(
        from_factory,
        "factories:tiny_fmnist",
        str(path),
        "fashion-mnist",
        match=r"asks for \w+\.system; refused",
    )
    assert not marker.exists()


# ----------------------------------------------------------------------------- RobustBench

ZOO_NAME = "Wong2020Fast"  # cifar10 Linf, a PreAct-ResNet-18 that normalises inside itself


def _zoo_entry() -> Any:
    return zoo_entries("cifar10", "Linf")[ZOO_NAME]


def _write_zoo_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """A random-initialised state dict saved as robustbench's load_model reads it:
    ``<dir>/cifar10/Linf/<name>.pt``, a dict whose ``state_dict`` keys carry ``module.``."""
    torch.manual_seed(0)
    net = _zoo_entry()["model"]()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    folder = model_dir / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / f"{ZOO_NAME}.pt"
    )
    return state


@pytest.mark.slow
def test_from_robustbench_offline(tmp_path: Path) -> None:
    state = _write_zoo_weights(tmp_path / "models")
    info_dir = tmp_path / "model_info"
    (info_dir / "cifar10" / "Linf").mkdir(parents=True)
    (info_dir / "cifar10" / "Linf" / f"{ZOO_NAME}.json").write_text(
        json.dumps(
            {
                "link": "https://arxiv.org/abs/2001.03994",
                "dataset": "cifar10",
                "architecture": "PreActResNet-18",
                "eps": "8/255",
                "clean_acc": "83.34",
                "reported": "46.06",
                "autoattack_acc": "43.21",
                "unreliable": False,  # a key robustbench's ModelInfo lacks: ignored
            }
        )
    )
    src = from_robustbench(
        ZOO_NAME, "linf", "cifar10", tmp_path / "models", info_dir, download=False
    )
    _assert_source(src, "robustbench", "cifar10", 10)
    assert src.fingerprint == fingerprint_state(state)
    assert (src.run_id, src.path) == (ZOO_NAME, ZOO_NAME)
    assert src.config["robustbench"] == ZOO_NAME and src.config["threat_model"] == "Linf"
    assert src.config["model_dir"] == str((tmp_path / "models").resolve())
    published = src.run["published"]
    assert published["clean_acc"] == 83.34 and published["autoattack_acc"] == 43.21
    assert published["eps"] == "8/255" and published["architecture"] == "PreActResNet-18"
    assert (
        published["source"]
        == f"model-info file {info_dir.resolve() / 'cifar10/Linf' / (ZOO_NAME + '.json')}"
    )
    # It takes [0, 1] images and normalises inside itself (CIFAR-10 mean/std buffers).
    m = src.model
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        inner = super(type(m), m).forward((x - m.mu) / m.sigma)
        assert torch.allclose(m(x), inner)
    assert torch.allclose(m.mu.flatten(), torch.tensor(dataset_info("cifar10").mean))

    # Without --model-info: no published numbers, and a note saying why.
    bare = from_robustbench(ZOO_NAME, "Linf", "cifar10", tmp_path / "models", download=False)
    assert bare.run["published"] is None and "no --model-info" in bare.run["published_note"]
    assert bare.fingerprint == src.fingerprint
    other = tmp_path / "empty_info"
    other.mkdir()
    noted = from_robustbench(
        ZOO_NAME, "Linf", "cifar10", tmp_path / "models", other, download=False
    )
    assert noted.run["published"] is None and "no model-info file" in noted.run["published_note"]


@pytest.mark.slow
def test_robustbench_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": _Evil(marker)}, folder / f"{ZOO_NAME}.pt")
    _usage(
        from_robustbench,
        ZOO_NAME,
        "Linf",
        "cifar10",
        tmp_path / "models",
        download=False,
        match=r"asks for \w+\.system; refused",
    )
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored


def test_robustbench_errors(tmp_path: Path) -> None:
    _usage(
        from_robustbench,
        "Wong2020Fast",
        "Linf",
        "fashion-mnist",
        match="no fashion-mnist models; valid: cifar10, cifar100",
    )
    _usage(
        from_robustbench,
        "Wong2020Fast",
        "L1",
        "cifar10",
        match="threat model 'L1'; valid: Linf, L2, corruptions",
    )
    with pytest.raises(UnknownNameError):
        from_robustbench("Wong2020Fast", "Linf", "imagenet")
    msg = _usage(
        from_robustbench,
        "Wong2020Fastt",
        "Linf",
        "cifar10",
        match="unknown RobustBench cifar10 Linf model",
    )
    assert msg.split("include ")[1].startswith("Wong2020Fast,") and "in all)" in msg
    _usage(
        from_robustbench,
        "Wong2020Fast",
        "L2",
        "cifar100",
        match="no cifar100 L2 models; threat models for cifar100: Linf, corruptions",
    )
    _usage(
        from_robustbench,
        ZOO_NAME,
        "Linf",
        "cifar10",
        tmp_path,
        download=False,
        match=f"not found at {tmp_path}/cifar10/Linf/{ZOO_NAME}.pt",
    )
    assert not (tmp_path / "cifar10").exists()  # nothing created
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    (folder / f"{ZOO_NAME}.pt").write_bytes(b"")
    _usage(
        from_robustbench,
        ZOO_NAME,
        "Linf",
        "cifar10",
        tmp_path,
        tmp_path / "no_info",
        download=False,
        match="--model-info .*no_info is not a directory",
    )
    bad_info = tmp_path / "info" / "cifar10" / "Linf"
    bad_info.mkdir(parents=True)
    (bad_info / f"{ZOO_NAME}.json").write_text('{"clean_acc": "n/a"}')
    _usage(
        from_robustbench,
        ZOO_NAME,
        "Linf",
        "cifar10",
        tmp_path,
        tmp_path / "info",
        download=False,
        match="clean_acc 'n/a' is not a number",
    )
    (bad_info / f"{ZOO_NAME}.json").write_text("[1")
    _usage(
        from_robustbench,
        ZOO_NAME,
        "Linf",
        "cifar10",
        tmp_path,
        tmp_path / "info",
        download=False,
        match="can't be read: JSONDecodeError",
    )
    _usage(
        from_robustbench,
        ZOO_NAME,
        "Linf",
        "cifar10",
        tmp_path,
        download=False,
        match=f"could not load cifar10 Linf model {ZOO_NAME}",
    )
