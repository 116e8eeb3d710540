"""Exported encoders: the self-describing header, ``ldisc-export`` key names, and the libraries
(segmentation_models_pytorch, timm, torchvision) computing the same features from them."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import ldisc
from ldisc.export import export_encoder, feature_names, main, read_export, vgg_cfg
from ldisc.model import LDNet, load_encoder, save_encoder
from ldisc.views import INPUT_NORMALIZATION

ROOT = Path(__file__).resolve().parents[1]
# segmentation_models_pytorch, timm and torchvision live in a side folder of the venv (`make` installs
# them there with --no-deps; see docs/export.md): never in site-packages, where torchvision breaks torch
INTEROP = Path(os.environ.get("LDISC_INTEROP_PATH", Path(sys.prefix) / "interop"))
# torchvision's vgg16_bn: conv layers of features (conv, BN, ReLU per layer; a max-pool after each block)
TORCHVISION_VGG16_BN_CONVS = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)


def _encoder(in_channels: int, width: str = "tiny", seed: int = 0) -> LDNet:
    """An LD network whose encoder BN layers hold non-trivial statistics (eval mode uses them)."""
    torch.manual_seed(seed)
    model = LDNet(width, 32, 0, in_channels=in_channels).eval()
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("modality", ["fundus", "xray"])
def test_header_describes_the_encoder(tmp_path, suffix, modality):
    channels, mean, std = INPUT_NORMALIZATION[modality]
    model = _encoder(channels)
    cfg = OmegaConf.create({"model": {"width": "tiny"}, "data": {"modality": modality}})
    path = save_encoder(model, tmp_path / f"encoder{suffix}", step=1234, modality=modality, cfg=cfg)
    enc = load_encoder(path)
    h = enc.header
    assert (h.architecture, h.width, h.channels, h.in_channels, h.conv_bias) == (
        "vgg16_bn", "tiny", (16, 32, 64, 128, 128), channels, True)
    assert (h.modality, h.mean, h.std, h.step) == (modality, tuple(mean), tuple(std), 1234)
    assert h.ldisc_version == ldisc.__version__
    assert h.config_digest == hashlib.sha256(OmegaConf.to_yaml(cfg).encode()).hexdigest()[:16]
    assert h.normalization_text() == ("(x − 0.5) / 0.5" if modality == "xray" else
                                      "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]")
    if suffix == ".safetensors":   # other tools read it as plain str → str metadata
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta["architecture"] == "vgg16_bn" and json.loads(meta["mean"]) == list(mean)
        assert meta["step"] == "1234" and meta["config_digest"] == h.config_digest
    x = torch.randn(2, channels, 32, 32)
    for a, b in zip(enc.eval()(x), model.encoder(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_files_without_header_still_load(tmp_path, suffix):
    """Encoder files written before the header existed: width and in_channels only."""
    model = _encoder(1)
    state = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
    path = tmp_path / f"old{suffix}"
    if suffix == ".pt":
        torch.save({"encoder": state, "width": "tiny", "in_channels": 1}, path)
    else:
        from safetensors.torch import save_file
        save_file(state, str(path), metadata={"width": "tiny", "in_channels": "1"})
    enc = load_encoder(path)
    assert enc.header is None and enc.in_channels == 1
    x = torch.randn(1, 1, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(enc.eval()(x), model.encoder(x)))
    # exporting an old file derives the header from the weights (1 channel: the X-ray contract)
    _, meta = export_encoder(path, "timm", tmp_path / "old_timm.safetensors")
    assert (meta["modality"], meta["mean"], meta["std"]) == ("xray", [0.5], [0.5])
    assert "step" not in meta


def test_key_names_follow_torchvision_vgg16_bn(tmp_path):
    names = feature_names()
    convs = [int(v.split(".")[1]) for k, v in names.items() if k.endswith(".0")]
    assert tuple(convs) == TORCHVISION_VGG16_BN_CONVS
    assert vgg_cfg((64, 128, 256, 512, 512)) == [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                                  512, 512, 512, "M", 512, 512, 512, "M"]
    path = save_encoder(_encoder(3, "full"), tmp_path / "encoder.pt", step=9)
    out, meta = export_encoder(path, "torchvision-vgg", tmp_path / "vgg16_bn.pth")
    weights = torch.load(out, weights_only=True)
    # the 13 conv + 13 BN layers of torchvision's vgg16_bn, each with its usual tensors and shapes
    assert len(weights) == 13 * 2 + 13 * 5
    assert weights["features.0.weight"].shape == (64, 3, 3, 3)
    assert weights["features.40.weight"].shape == (512, 512, 3, 3)
    assert weights["features.41.running_var"].shape == (512,)
    assert weights["features.41.num_batches_tracked"].dtype == torch.int64
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar == meta and sidecar["target"] == "torchvision-vgg" and sidecar["step"] == 9


def test_smp_settings_and_round_trip(tmp_path):
    path = save_encoder(_encoder(1), tmp_path / "encoder.safetensors", step=3, modality="xray")
    out, meta = export_encoder(path, "smp", tmp_path / "smp.safetensors")
    weights, back = read_export(out)
    assert back == meta
    assert back["smp_params"] == {"out_channels": [16, 32, 64, 128, 128, 128], "config": vgg_cfg(
        (16, 32, 64, 128, 128)), "batch_norm": True}
    assert back["in_chans"] == 1 and weights["features.0.weight"].shape == (16, 1, 3, 3)


def _checkpointed_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory with two complete checkpoints (the layout of ldisc.train.checkpoint)."""
    run = tmp_path / "run"
    for step in (4, 8):
        ck = run / "checkpoints" / f"step_{step:07d}"
        save_encoder(_encoder(3, seed=step), ck / "encoder.pt", step=step)
        (ck / "COMPLETE").write_text("")
    return run, ck


def test_cli_resolves_run_dir_and_writes_each_target(tmp_path, capsys):
    run, newest = _checkpointed_run(tmp_path)
    for target, source in (("smp", run), ("timm", run / "latest"), ("torchvision-vgg", newest)):
        out = tmp_path / f"{target}.safetensors"
        args = ["--to", target, str(source), str(out)]
        if target == "smp":     # once as the console script runs it, the others in-process
            proc = _run("-m", "ldisc.export", *args)
            assert proc.returncode == 0, proc.stderr
            stdout = proc.stdout
        else:
            main(args)
            stdout = capsys.readouterr().out
        assert f"→ {out}" in stdout and "step 8" in stdout
        _, meta = read_export(out)
        assert (meta["target"], meta["step"], meta["source"]) == (target, 8, str(newest / "encoder.pt"))


def _exit_code(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(args)
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    xray = save_encoder(_encoder(1), tmp_path / "xray.pt")
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    cases = {
        (str(tmp_path / "missing"), "smp"): "neither an encoder file",
        (str(junk), "smp"): "not an ldisc encoder file",
        (str(xray), "torchvision-vgg"): "3 input channels",
        (str(empty), "timm"): "no latest checkpoint",
        (str(xray), "keras"): "invalid choice",
    }
    for (source, target), words in cases.items():
        code, _, err = _exit_code(["--to", target, source, str(tmp_path / "out.safetensors")], capsys)
        assert code == 2, (source, err)
        assert err.startswith("ldisc-export: error: ") or target == "keras", err
        assert words in err and "Traceback" not in err and err.strip().splitlines()[-1].count(words) == 1
    assert not (tmp_path / "out.safetensors").exists()
    code, out, _ = _exit_code(["--version"], capsys)
    assert code == 0 and out.strip() == f"ldisc-export {ldisc.__version__}"


@pytest.mark.skipif(not (INTEROP / "segmentation_models_pytorch").is_dir(),
                    reason=f"segmentation_models_pytorch/timm/torchvision not installed in {INTEROP} (pip install --no-deps -c tests/interop-constraints.txt --target DIR torchvision segmentation-models-pytorch timm huggingface-hub; LDISC_INTEROP_PATH=DIR)")
def test_library_features_equal_load_encoder(tmp_path):
    """Each library's own network, built from the exported file, gives ldisc.load_encoder's features
    (smp's U-Net for an X-ray and a fundus encoder, timm's VGG for X-ray, torchvision's VGG for fundus)."""
    cases = [("smp", "xray"), ("smp", "fundus"), ("timm", "xray"), ("torchvision-vgg", "fundus")]
    args = []
    for i, (target, modality) in enumerate(cases):
        channels = INPUT_NORMALIZATION[modality][0]
        path = save_encoder(_encoder(channels, seed=i), tmp_path / f"encoder{i}.safetensors", step=2, modality=modality)
        out, _ = export_encoder(path, target, tmp_path / f"{target}{i}.safetensors")
        args += [target, str(out), str(path)]
    proc = _run(str(ROOT / "tests" / "_interop_check.py"), *args, env={"PYTHONPATH": f"{ROOT}{os.pathsep}{INTEROP}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["target"] for r in results] == [t for t, _ in cases]
    assert results[0]["library"].startswith("segmentation_models_pytorch ")
    for result in results:
        assert len(result["max_abs_diff"]) == 5 and max(result["max_abs_diff"]) <= 1e-6, result
        assert result["shapes"][0] == [2, 16, 64, 64] and result["shapes"][4] == [2, 128, 4, 4]
    for result in results[:3]:   # smp's and timm's sixth feature: the last block after its pool (stride 32)
        assert result["features"] == 6 and result["pooled_max_abs_diff"][0] <= 1e-6, result
