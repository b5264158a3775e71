"""The training loop and ``bench train`` / ``bench list`` end to end, on the CPU, in seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import checkpoint
from bench.cli import main
from bench.data import DATASETS, DatasetInfo
from bench.defenses import DEFENSES
from bench.errors import UsageError
from bench.models import MODELS
from bench.train import TrainConfig, augment_batch, lr_at, prepare, train


def _train_argv(tmp_path: Path, data_dir: Path, defense: str, *extra: str) -> list[str]:
    return [
        "train",
        "--defense",
        defense,
        "--dataset",
        "fashion-mnist",
        "--model",
        "cnn",
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "--eval-n",
        "64",
        "--batch-size",
        "32",
        "--data-dir",
        str(data_dir),
        "--no-download",
        "--no-progress",
        "--out",
        str(tmp_path / "ckpt"),
        *extra,
    ]


@pytest.mark.parametrize("defense", DEFENSES.names())
def test_bench_train_every_defense(defense, tmp_path, fmnist_dir, capsys):
    status = main(_train_argv(tmp_path, fmnist_dir, defense, "--run-id", f"r-{defense}"))
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    run_dir = Path(out[-1])  # the checkpoint's path is the last line of stdout
    assert run_dir == tmp_path / "ckpt" / f"r-{defense}"
    ck = checkpoint.read_checkpoint(run_dir)
    assert ck.defense == defense and ck.config["epochs"] == 1 and ck.config["seed"] == 0
    assert set(ck.config["defense_params"]) == set(DEFENSES[defense].defaults)
    assert ck.config["dataset_info"]["image_size"] == 28 and ck.config["train_size"] == 128
    assert {"torch", "python"} <= set(ck.run["versions"]) and ck.run["train_seconds"] > 0
    assert len(ck.log) == 1 and 0.0 <= ck.log[0]["clean_acc"] <= 1.0
    assert ("train_robust_acc" in ck.log[0]) == DEFENSES[defense].extra["adversarial"]
    model = ck.load_model("cpu")
    assert not model.training
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_named_flags_and_set_reach_the_defense(tmp_path, fmnist_dir, capsys):
    argv = _train_argv(
        tmp_path, fmnist_dir, "pgd-at", "--eps", "4/255", "--set", "steps=2", "--run-id", "p"
    )
    assert main(argv) == 0
    params = checkpoint.read_checkpoint(tmp_path / "ckpt" / "p").config["defense_params"]
    assert params["eps"] == pytest.approx(4 / 255) and params["steps"] == 2


def test_training_learns_and_is_reproducible(tmp_path, fmnist_dir):
    def run(run_id: str) -> checkpoint.Checkpoint:
        cfg = TrainConfig(
            epochs=3,
            train_limit=256,
            eval_n=128,
            batch_size=32,
            data_dir=str(fmnist_dir),
            download=False,
            out_dir=str(tmp_path),
            run_id=run_id,
            lr=0.05,
        )
        return checkpoint.read_checkpoint(train(cfg, progress=False, log=lambda s: None))

    a, b = run("a"), run("b")
    assert a.log[-1]["clean_acc"] > 0.5  # the bands are easy: well above chance (0.1)
    assert a.log[-1]["loss"] < a.log[0]["loss"]
    wa, wb = a.load_state(), b.load_state()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize(
    "argv_extra,needle",
    [
        (["--defense", "nope"], "unknown defense 'nope'; valid: standard"),
        (["--model", "nope"], "unknown model 'nope'; valid: cnn"),
        (["--dataset", "nope"], "unknown data set 'nope'; valid: fashion-mnist"),
        (["--defense", "pgd-at", "--eps", "8/0"], "divides by zero"),
        (["--defense", "pgd-at", "--eps", "-1"], "[0, 1]"),
        (["--defense", "pgd-at", "--eps", "abc"], "not a number"),
        (["--defense", "pgd-at", "--set", "bogus=1"], "no parameter 'bogus'; valid: alpha, eps"),
        (["--defense", "standard", "--eps", "8/255"], "defense standard has no parameter 'eps'"),
        (["--epochs", "0"], "--epochs"),
        (["--train-limit", "100000"], "256"),  # the split size of the files in fmnist_dir
        (["--bogus-flag"], "unrecognized arguments"),
        (["--device", "bogus"], "--device 'bogus'"),
        pytest.param(
            ["--device", "cuda"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here"),
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    argv_extra, needle, tmp_path, fmnist_dir, capsys
):
    argv = _train_argv(tmp_path, fmnist_dir, "standard") + argv_extra
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("bench: error: ")
    assert needle in err
    assert not (tmp_path / "ckpt").exists()


def test_a_model_that_cannot_take_the_data_set(tmp_path, fmnist_dir, capsys):
    """A data set of 3x3 images is too small for the cnn (it pools twice): exit 2, nothing
    written."""
    info = DatasetInfo("tiny4", 1, 3, 10, (0.5,), (0.5,), 10, 10, "none")
    DATASETS.add("tiny4", lambda *a, **k: None, "test only", info=info)
    try:
        status = main(_train_argv(tmp_path, fmnist_dir, "standard") + ["--dataset", "tiny4"])
    finally:
        DATASETS.remove("tiny4")
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "cnn" in err
    assert not (tmp_path / "ckpt").exists()


def test_missing_data_names_the_package_or_flag(tmp_path, capsys, monkeypatch):
    import bench.data

    monkeypatch.setattr(bench.data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    status = main(_train_argv(tmp_path, tmp_path / "empty", "standard"))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "dataset-fashion-mnist" in err and "--data-dir" in err


def test_schedules():
    cfg = TrainConfig(lr=0.1)
    assert [lr_at(cfg, i, 100) for i in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    cos = TrainConfig(lr=0.1, schedule="cosine")
    assert lr_at(cos, 0, 100) == pytest.approx(0.1) and lr_at(cos, 50, 100) == pytest.approx(0.05)
    assert lr_at(cos, 100, 100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("mode", ["none", "crop", "crop-flip"])
def test_augmentation_keeps_pixels_and_shape(mode):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    out = augment_batch(x, mode)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    if mode == "none":
        assert out is x
    else:
        # Each output image is a shifted (and maybe flipped) window of its input: every nonzero
        # pixel value comes from the same image.
        for i in range(4):
            vals = set(out[i][out[i] > 0].tolist())
            assert vals <= set(x[i].flatten().tolist())
        assert not torch.equal(out, x)


def test_prepare_checks_everything_before_writing(tmp_path, fmnist_dir):
    cfg = TrainConfig(
        defense="batchout",
        defense_params={"layers": "names:nope"},
        data_dir=str(fmnist_dir),
        download=False,
        out_dir=str(tmp_path / "ckpt"),
    )
    with pytest.raises(UsageError):
        prepare(cfg)
    assert not (tmp_path / "ckpt").exists()


def test_existing_run_dir_is_refused(tmp_path, fmnist_dir, capsys):
    argv = _train_argv(tmp_path, fmnist_dir, "standard", "--run-id", "same")
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_bench_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        DATASETS.names() + MODELS.names() + DEFENSES.names() + ["autoattack", "pgd", "fgsm"]
    ):
        assert f"  {name} " in out
    assert "eps=8/255" in out and "steps=10" in out and "beta=6" in out


def test_python_dash_m_bench_runs(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "bench", "--version"], capture_output=True, text=True
    )
    assert res.returncode == 0 and res.stdout.startswith("bench ")


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path, fmnist_dir, capsys):
    assert main(_train_argv(tmp_path, fmnist_dir, "standard", "--run-id", "w")) == 0
    run_dir = tmp_path / "ckpt" / "w"
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["dataset_info"]["num_classes"] = 7  # the saved head has 10 outputs
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="weights don't fit model cnn"):
        checkpoint.read_checkpoint(run_dir).load_model()


# --- numbers, step-size rule: refused before any data is read --------------------------------


@pytest.mark.parametrize(
    "argv_extra,needle",
    [
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
        (["--momentum", "-1"], "--momentum must be in [0, 1)"),
        (["--momentum", "nan"], "--momentum must be in [0, 1)"),
        (["--epochs", "0"], "--epochs must be a whole number in 1..100000"),
        (["--batch-size", "0"], "--batch-size must be a whole number in 1..1000000"),
        (["--train-limit", "0"], "--train-limit must be a whole number >= 1"),
        (["--seed", "18446744073709551616"], "--seed must be a whole number in 0..2**63-1"),
        (["--seed", "-1"], "--seed must be a whole number in 0..2**63-1"),
        (
            ["--defense", "pgd-at", "--eps", "0.1", "--alpha", "2/255"],
            "can't reach the edge of the ball",
        ),
        (
            ["--defense", "trades", "--eps", "0.1", "--alpha", "2/255"],
            "can't reach the edge of the ball",
        ),
        (["--seeds", "0,x"], "'x' is not a whole number"),
        (["--seeds", "1,1"], "seed 1 is listed twice"),
        (["--seeds", "-1"], "outside 0..2**63-1"),
        (["--seeds", "0,18446744073709551616"], "outside 0..2**63-1"),
        (["--seeds", "0,1", "--seed", "2"], "not allowed with argument"),
    ],
)
def test_bad_numbers_are_refused_before_the_data_is_read(
    argv_extra, needle, tmp_path, capsys, monkeypatch
):
    """The data directory is empty: had the data been read first, the error would be about it."""
    import bench.data

    monkeypatch.setattr(bench.data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    argv = _train_argv(tmp_path, tmp_path / "empty", "standard") + argv_extra
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("bench: error: ")
    assert needle in err and "not found" not in err
    assert not (tmp_path / "ckpt").exists()


def test_the_step_rule_is_visible_in_config(tmp_path, fmnist_dir, capsys):
    argv = _train_argv(
        tmp_path, fmnist_dir, "pgd-at", "--eps", "0.1", "--steps", "2", "--run-id", "p"
    )
    assert main(argv) == 0
    config = checkpoint.read_checkpoint(tmp_path / "ckpt" / "p").config
    assert config["defense_params"]["alpha"] is None
    assert config["defense_resolved"] == {"alpha": 0.1 / 4, "alpha_rule": "eps/4"}
    argv = _train_argv(
        tmp_path, fmnist_dir, "trades", "--alpha", "4/255", "--steps", "2", "--run-id", "t"
    )
    assert main(argv) == 0
    config = checkpoint.read_checkpoint(tmp_path / "ckpt" / "t").config
    assert config["defense_params"]["alpha"] == 4 / 255
    assert config["defense_resolved"] == {"alpha": 4 / 255, "alpha_rule": "explicit"}


# --- several seeds --------------------------------------------------------------------------


def test_seeds_train_one_checkpoint_each(tmp_path, fmnist_dir, capsys):
    assert (
        main(_train_argv(tmp_path, fmnist_dir, "standard", "--seeds", "3,1", "--run-id", "m")) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == [str(tmp_path / "ckpt" / "m-s3"), str(tmp_path / "ckpt" / "m-s1")]
    a, b = (checkpoint.read_checkpoint(p) for p in lines[-2:])
    assert (a.config["seed"], b.config["seed"]) == (3, 1) and a.fingerprint != b.fingerprint
    assert main(_train_argv(tmp_path, fmnist_dir, "standard", "--seeds", "0,2")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [
        Path(p).name.startswith(f"standard-cnn-fashion-mnist-s{s}-")
        for p, s in zip(lines[-2:], (0, 2))
    ] == [True, True]


def test_seeds_are_all_validated_before_the_first_trains(tmp_path, fmnist_dir, capsys):
    assert main(_train_argv(tmp_path, fmnist_dir, "standard", "--run-id", "m-s1")) == 0
    capsys.readouterr()
    status = main(_train_argv(tmp_path, fmnist_dir, "standard", "--seeds", "0,1", "--run-id", "m"))
    err = capsys.readouterr().err
    assert status == 2 and "m-s1 already exists" in err and err.count("\n") == 1
    assert not (tmp_path / "ckpt" / "m-s0").exists()


# --- weights files: safetensors, legacy .pt, hostile pickles --------------------------------


def _finished(tmp_path: Path, fmnist_dir: Path, run_id: str = "w") -> checkpoint.Checkpoint:
    assert main(_train_argv(tmp_path, fmnist_dir, "standard", "--run-id", run_id)) == 0
    return checkpoint.read_checkpoint(tmp_path / "ckpt" / run_id)


def test_weights_are_safetensors_and_legacy_pt_still_reads(tmp_path, fmnist_dir, capsys):
    from bench.weights import fingerprint_model

    ck = _finished(tmp_path, fmnist_dir)
    names = {p.name for p in ck.path.iterdir()}
    assert (
        "weights.safetensors" in names
        and "weights.pt" not in names
        and "state.safetensors" not in names
    )
    assert ck.run["complete"] is True
    fp, model = ck.fingerprint, ck.load_model()
    assert fp == fingerprint_model(model)  # the same tensors, however they are held
    state = ck.load_state()
    (ck.path / "weights.safetensors").unlink()
    torch.save(state, ck.path / "weights.pt")
    legacy = checkpoint.read_checkpoint(ck.path / "weights.pt")
    assert legacy.weights_path.name == "weights.pt" and legacy.fingerprint == fp
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(legacy.load_model()(x), model(x))


class _Payload:
    """Unpickling this creates a file: what a hostile weights file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_that_would_run_code_is_refused(how, tmp_path, fmnist_dir, capsys):
    import pickle

    ck = _finished(tmp_path, fmnist_dir)
    capsys.readouterr()
    (ck.path / "weights.safetensors").unlink()
    marker = tmp_path / "pwned"
    payload = {"classifier.3.weight": _Payload(marker)}
    if how == "torch.save":
        torch.save(payload, ck.path / "weights.pt")
    else:
        (ck.path / "weights.pt").write_bytes(pickle.dumps(payload))
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))  # the payload is live: plain unpickling runs it
    assert control.exists()
    for use in (lambda c: c.load_model(), lambda c: c.fingerprint):
        with pytest.raises(UsageError) as info:
            use(checkpoint.read_checkpoint(ck.path))
        assert "\n" not in str(info.value) and "weights.pt" in str(info.value)
    assert not marker.exists()
    status = main(
        [
            "eval",
            "--attack",
            "fgsm",
            "--checkpoint",
            str(ck.path),
            "--n",
            "8",
            "--data-dir",
            str(fmnist_dir),
            "--no-download",
            "--db",
            str(tmp_path / "r.sqlite"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and not marker.exists()


# --- speed options: bf16 autocast, channels-last, torch.compile (all off by default) -----------


def _speed_run(
    tmp_path: Path, data_dir: Path, run_id: str, defense: str = "pgd-at", **options: object
) -> checkpoint.Checkpoint:
    cfg = TrainConfig(
        defense=defense,
        defense_params={"steps": "2"} if defense == "pgd-at" else {},
        epochs=1,
        train_limit=128,
        eval_n=64,
        batch_size=32,
        data_dir=str(data_dir),
        download=False,
        out_dir=str(tmp_path),
        run_id=run_id,
        **options,
    )  # type: ignore[arg-type]
    return checkpoint.read_checkpoint(train(cfg, progress=False, log=lambda s: None))


def test_bf16_and_channels_last_train_and_are_recorded(tmp_path, fmnist_dir, one_thread):
    """Off by default and recorded in config.json; bf16 autocast changes the arithmetic (other
    weights, a finite loss); channels-last gives an ordinary, loadable checkpoint."""
    plain = _speed_run(tmp_path, fmnist_dir, "plain")
    assert (plain.config["amp"], plain.config["channels_last"], plain.config["compile"]) == (
        "off",
        False,
        False,
    )
    bf16 = _speed_run(tmp_path, fmnist_dir, "bf16", amp="bf16")
    assert bf16.config["amp"] == "bf16" and bf16.fingerprint != plain.fingerprint
    assert (
        math.isfinite(bf16.log[0]["loss"]) and abs(bf16.log[0]["loss"] - plain.log[0]["loss"]) < 0.1
    )
    last = _speed_run(tmp_path, fmnist_dir, "cl", channels_last=True)
    assert last.config["channels_last"] is True
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(
        last.load_model()(x), plain.load_model()(x), atol=1e-3
    )  # same training, other layout


def test_bad_amp_is_one_line_exit_2(tmp_path, fmnist_dir, capsys):
    assert main(_train_argv(tmp_path, fmnist_dir, "standard") + ["--amp", "fp8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--amp" in err and not (tmp_path / "ckpt").exists()
    with pytest.raises(UsageError, match="--amp must be one of off, bf16"):
        prepare(
            TrainConfig(amp="fp16", data_dir=str(fmnist_dir), download=False, out_dir=str(tmp_path))
        )


def test_resume_keeps_the_saved_speed_options(tmp_path):
    from bench.train import config_from_saved

    saved = {"dataset": "fashion-mnist", "amp": "bf16", "channels_last": True, "compile": False}
    cfg = config_from_saved(saved, tmp_path / "run")
    assert (cfg.amp, cfg.channels_last, cfg.compile) == ("bf16", True, False)
    assert (
        config_from_saved({"dataset": "fashion-mnist"}, tmp_path / "old").amp == "off"
    )  # older runs


@pytest.mark.slow
def test_compile_trains_the_same_model(tmp_path, fmnist_dir, one_thread):
    """torch.compile (inductor: about a minute of warm-up on 2 CPU cores): the checkpoint holds
    the model's own weights (no ``_orig_mod.`` prefix) and matches eager training closely."""
    plain = _speed_run(tmp_path, fmnist_dir, "eager", defense="standard")
    compiled = _speed_run(tmp_path, fmnist_dir, "compiled", defense="standard", compile=True)
    assert compiled.config["compile"] is True
    state = compiled.load_state()
    assert set(state) == set(plain.load_state())
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(compiled.load_model()(x), plain.load_model()(x), atol=1e-3)


def test_the_epoch_line_starts_a_line_when_stderr_is_a_file(tmp_path, fmnist_dir, capfd):
    """With the bar on and stderr not a terminal, each epoch line is a line of its own."""
    cfg = TrainConfig(
        epochs=2,
        train_limit=64,
        eval_n=32,
        batch_size=32,
        data_dir=str(fmnist_dir),
        download=False,
        out_dir=str(tmp_path),
        run_id="bar",
    )
    train(cfg, progress=True)
    err = capfd.readouterr().err.replace("\r", "\n").splitlines()
    epochs = [line for line in err if "epoch " in line and "loss" in line]
    assert len(epochs) == 2 and all(line.startswith("epoch ") for line in epochs), epochs
