"""Run in a subprocess by tests/test_export.py: build the target library's network from an
``ldisc-export`` file, feed it the same input as ``ldisc.load_encoder``'s encoder, print the largest
feature differences as one JSON object.

usage: python tests/_interop_check.py TARGET EXPORTED ENCODER_FILE [TARGET EXPORTED ENCODER_FILE …]
(TARGET: smp | timm | torchvision-vgg; one JSON line per triple)

torchvision from PyPI is built against the CUDA torch; beside the CPU torch its compiled ops do not
load and ``import torchvision`` stops in ``torchvision._meta_registrations`` (fake kernels for
``torchvision::nms`` etc.). VGG, smp and timm use none of those ops: where that import fails, the
check imports torchvision again with that one module left empty, and everything else real.
"""
from __future__ import annotations

import json
import sys
import types


def import_torchvision():
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision


def target_features(target: str, exported: str, in_channels: int):
    """(callable x → list of features, what the library said about the weights)."""
    import torch
    from ldisc.export import read_export, register_smp_encoder

    weights, meta = read_export(exported)
    if target == "smp":
        import segmentation_models_pytorch as smp
        name = register_smp_encoder(exported)
        net = smp.Unet(name, encoder_weights=None, in_channels=in_channels, classes=1).eval()
        net.encoder.load_state_dict(weights)                     # strict: every key and shape
        with torch.no_grad():
            net(torch.zeros(1, in_channels, 64, 64))             # the whole U-Net runs on these weights
        return net.encoder, {"library": f"segmentation_models_pytorch {smp.__version__}", "encoder": name}
    if target == "timm":
        import timm
        from timm.models.vgg import VGG
        net = VGG(meta["vgg_cfg"], num_classes=0, in_chans=in_channels, norm_layer=torch.nn.BatchNorm2d).eval()
        missing, unexpected = net.load_state_dict(weights, strict=False)
        assert not unexpected and all(k.startswith("pre_logits.") for k in missing), (missing, unexpected)
        points = [int(info["module"].split(".")[1]) for info in net.feature_info]   # timm's own feature taps
        return _taps(net.features, points), {"library": f"timm {timm.__version__}", "taps": points}
    tv = import_torchvision()
    from torchvision.models.vgg import VGG, make_layers
    net = VGG(make_layers(meta["vgg_cfg"], batch_norm=True)).eval()
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    pools = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
    return _taps(net.features, [p - 1 for p in pools]), {"library": f"torchvision {tv.__version__}"}


def _taps(sequential, points):
    def run(x):
        out = []
        for i, module in enumerate(sequential):
            x = module(x)
            if i in points:
                out.append(x)
        return out
    return run


def check(target: str, exported: str, encoder_file: str) -> dict:
    import torch
    import ldisc

    ours = ldisc.load_encoder(encoder_file).eval()
    forward, info = target_features(target, exported, ours.in_channels)
    x = torch.randn(2, ours.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine, theirs = ours(x), forward(x)
    diffs = [float((a - b).abs().max()) for a, b in zip(mine, theirs)]
    extra = theirs[len(mine):]              # smp / timm add the stride-32 output of the last pool
    pooled = [float((torch.nn.functional.max_pool2d(mine[-1], 2) - e).abs().max()) for e in extra]
    return {"target": target, **info, "features": len(theirs), "shapes": [list(t.shape) for t in theirs],
            "max_abs_diff": diffs, "pooled_max_abs_diff": pooled}


def main() -> None:
    import_torchvision()                     # smp and timm import it first thing
    args = sys.argv[1:]
    for i in range(0, len(args), 3):
        print(json.dumps(check(*args[i:i + 3])), flush=True)


if __name__ == "__main__":
    main()
