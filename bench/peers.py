#!/usr/bin/env python3
"""Benchmark peers for Atelier: PyTorch (CPU) and ONNX Runtime (CPU) running the
same network with the same weights.

Example:
  python bench/peers.py --weights gen.safetensors --arch resnet_9blocks --ngf 64 \\
      --norm instance --sizes 256,512,1024 --threads 2 --warmup 1 --repeat 5

The weights file holds a state dict in reference key names (e.g.
``model.10.conv_block.1.weight``), without any prefix such as ``module.`` or
``netG.``; it is loaded strictly (missing BatchNorm ``num_batches_tracked``
counters are tolerated: they do not affect inference).

Exactly one JSON object is written to stdout; everything else (progress, logs,
exporter warnings) goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "tests", "reference")))

# Keep stdout clean for the JSON result: whatever the libraries below print
# (Python or native code) goes to stderr; the result goes to the saved fd.
_RESULT_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import refnets  # noqa: E402

IMAGE_ARCHES = ["resnet_6blocks", "resnet_9blocks", "unet_128", "unet_256", "light",
                "basic", "n_layers", "pixel"]
# spatial size must be a multiple of this
SIZE_MULTIPLE = {"resnet_6blocks": 4, "resnet_9blocks": 4, "light": 4, "unet_128": 128, "unet_256": 256,
                 "basic": 1, "n_layers": 1, "pixel": 1}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="state dict (.safetensors) in reference key names")
    ap.add_argument("--arch", required=True, choices=IMAGE_ARCHES)
    ap.add_argument("--ngf", type=int, default=64, help="ngf (generators) or ndf (discriminators)")
    ap.add_argument("--norm", default="instance", choices=["instance", "batch"],
                    help="ignored for light (always instance norm)")
    ap.add_argument("--n-blocks", type=int, default=None,
                    help="residual blocks (default: 6/9 from the arch name, 6 for light)")
    ap.add_argument("--n-layers", type=int, default=3, help="n_layers for --arch n_layers")
    ap.add_argument("--input-nc", type=int, default=3)
    ap.add_argument("--output-nc", type=int, default=3)
    ap.add_argument("--dropout", action="store_true", help="net built with use_dropout (only shifts keys)")
    ap.add_argument("--sizes", default="256,512,1024", help="comma-separated square input sizes (batch 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--onnx-dynamic", action="store_true",
                    help="export once with dynamic H/W instead of one static-shape export per size")
    ap.add_argument("--skip-onnxruntime", action="store_true")
    ap.add_argument("--check-output", metavar="FILE.safetensors",
                    help="save input, pytorch and onnxruntime outputs for the smallest size")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random input in [-1, 1)")
    a = ap.parse_args()
    try:
        a.sizes = sorted({int(s) for s in a.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error("--sizes must be comma-separated integers")
    if not a.sizes:
        ap.error("--sizes is empty")
    m = SIZE_MULTIPLE[a.arch]
    bad = [s for s in a.sizes if s <= 0 or s % m]
    if bad:
        ap.error("%s needs sizes that are multiples of %d (got %s)" % (a.arch, m, bad))
    if a.threads < 1 or a.repeat < 1 or a.warmup < 0:
        ap.error("--threads and --repeat must be >= 1, --warmup >= 0")
    return a


def build_model(a):
    kw = dict(input_nc=a.input_nc, output_nc=a.output_nc, norm=a.norm, use_dropout=a.dropout,
              ngf=a.ngf, ndf=a.ngf, n_layers=a.n_layers, n_blocks=a.n_blocks)
    return refnets.build(a.arch, **kw)


def load_weights(model, path):
    sd = load_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    for k in tolerated:
        sd[k] = own[k]
    unexpected = [k for k in sd if k not in own]
    if len(missing) > len(tolerated) or unexpected:
        hint = ""
        prefixes = {k.split(".", 1)[0] for k in sd if k not in tolerated}
        if len(prefixes) == 1 and all("." in k for k in sd if k not in tolerated):
            stripped = {k.split(".", 1)[1] for k in sd if k not in tolerated}
            if stripped <= set(own):
                hint = " (every key starts with %r: keys must carry no prefix)" % (prefixes.pop() + ".")
        hard_missing = [k for k in missing if k not in tolerated]
        raise SystemExit("weights %s do not match the model (check --arch/--ngf/--norm/--n-blocks/--dropout): "
                         "%d missing %s, %d unexpected %s%s"
                         % (path, len(hard_missing), hard_missing[:8], len(unexpected), unexpected[:8], hint))
    for k, v in sd.items():
        if v.shape != own[k].shape:
            raise SystemExit("weights %s: %s has shape %s, model expects %s"
                             % (path, k, tuple(v.shape), tuple(own[k].shape)))
    model.load_state_dict(sd, strict=True)
    return model


def time_torch(model, x, warmup, repeat):
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            y = model(x)
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples, y


def export_onnx(model, x, path, opset, dynamic):
    kw = {}
    if dynamic:
        kw["dynamic_axes"] = {"input": {2: "height", 3: "width"}, "output": {2: "out_height", 3: "out_width"}}
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["output"],
                          opset_version=opset, do_constant_folding=True, dynamo=False, **kw)


def make_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def _status_mb(field):
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux clear_refs 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def time_ort(sess, x_np, warmup, repeat):
    feed = {"input": x_np}
    for _ in range(warmup):
        sess.run(None, feed)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        y = sess.run(None, feed)[0]
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples, y


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    model = build_model(a)
    load_weights(model, a.weights)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    log("peers: %s ngf=%d norm=%s params=%d threads=%d torch %s onnxruntime %s"
        % (a.arch, a.ngf, a.norm, n_params, a.threads, torch.__version__, ort.__version__))

    results = []
    check = None
    with tempfile.TemporaryDirectory(prefix="atelier-peers-") as tmp:
        dyn_sess = None
        for size in a.sizes:
            g = torch.Generator().manual_seed(a.seed)
            x = torch.rand(1, a.input_nc, size, size, generator=g) * 2 - 1
            log("size %d: pytorch ..." % size)
            pt_ms, y_pt = time_torch(model, x, a.warmup, a.repeat)
            r = {"size": size, "pytorch_ms": pt_ms, "pytorch_median_ms": statistics.median(pt_ms)}
            y_ort = None
            if not a.skip_onnxruntime:
                if a.onnx_dynamic:
                    if dyn_sess is None:
                        p = os.path.join(tmp, "model_dynamic.onnx")
                        log("exporting ONNX (dynamic H/W, opset %d) ..." % a.opset)
                        export_onnx(model, x, p, a.opset, dynamic=True)
                        dyn_sess = make_session(p, a.threads)
                    sess = dyn_sess
                else:
                    p = os.path.join(tmp, "model_%d.onnx" % size)
                    log("size %d: exporting ONNX (opset %d) ..." % (size, a.opset))
                    export_onnx(model, x, p, a.opset, dynamic=False)
                    sess = make_session(p, a.threads)
                log("size %d: onnxruntime ..." % size)
                x_np = x.numpy()
                rss_ok = reset_peak_rss()
                rss_before = _status_mb("VmRSS")
                ort_ms, y_ort = time_ort(sess, x_np, a.warmup, a.repeat)
                if rss_ok and rss_before is not None:
                    # Peak RSS while onnxruntime ran this size, and its growth over the RSS
                    # before (torch, the exported model and the session are already loaded).
                    r["onnxruntime_peak_rss_mb"] = _status_mb("VmHWM")
                    r["onnxruntime_rss_growth_mb"] = r["onnxruntime_peak_rss_mb"] - rss_before
                r["onnxruntime_ms"] = ort_ms
                r["onnxruntime_median_ms"] = statistics.median(ort_ms)
                r["max_abs_diff"] = float(np.abs(y_ort - y_pt.numpy()).max())
                if not a.onnx_dynamic:
                    del sess
            log("size %d: pytorch %.2f ms%s" % (size, r["pytorch_median_ms"],
                "" if y_ort is None else ", onnxruntime %.2f ms (max |diff| %.2e)"
                % (r["onnxruntime_median_ms"], r["max_abs_diff"])))
            results.append(r)
            if check is None:
                check = {"input": x.contiguous(), "pytorch": y_pt.clone().contiguous()}
                if y_ort is not None:
                    check["onnxruntime"] = torch.from_numpy(np.ascontiguousarray(y_ort))

    if a.check_output:
        save_file(check, a.check_output, metadata={"arch": a.arch, "size": str(a.sizes[0])})
        log("wrote %s (%s)" % (a.check_output, ", ".join(sorted(check))))

    out = {
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "threads": a.threads,
        "arch": a.arch,
        "ngf": a.ngf,
        "norm": a.norm,
        "params": n_params,
        "warmup": a.warmup,
        "repeat": a.repeat,
        "results": results,
    }
    _RESULT_OUT.write(json.dumps(out) + "\n")
    _RESULT_OUT.flush()


if __name__ == "__main__":
    main()
