"""ONNX Runtime sessions: the compute path of a model exported at packaging time (no torch on this path).

An artifact built with `packaging/build_artifact.py --backend onnx` carries the transformer as
`onnx/model.onnx` (and `onnx/model_int8.onnx`); `searchbox.json` says which file serves. Tokenizing,
batching, pooling, normalisation, Matryoshka and encodings stay what they are; only the forward pass
runs here. The session is tuned once: every graph optimisation, intra-op threads set to the
instance's cores, threads that sleep instead of spinning when idle (spinning starves the request
threads on a busy machine, as OpenMP's did), and the CUDA provider when a GPU is there and wanted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from model_handlers.errors import ModelDirectoryError

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
DEFAULT_ONNX_FILE = "onnx/model.onnx"


class OnnxSession:
    """One model graph, ready to run.

    Args:
        path: the .onnx file.
        device: "auto" (CUDA when ONNX Runtime has it and a GPU answers), "cpu", "cuda", "cuda:1".
        threads: intra-op threads (a lane's share: HandlerOptions.pass_threads).
    """

    def __init__(self, path: Path, device: str, threads: int):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise ModelDirectoryError(f"{path} does not exist; build the artifact with packaging/build_artifact.py "
                                      "--backend onnx, or serve this model with the torch backend")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        elif device.startswith("cuda"):
            raise ModelDirectoryError(f"device {device} asked for, but this ONNX Runtime has no CUDA provider "
                                      "(install onnxruntime-gpu)")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise ModelDirectoryError(f"cannot load {path} with ONNX Runtime: {exc}") from exc
        self.path = Path(path)
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        # what the exporter wrote beside the graph (e.g. the pooling a sparse export traced into it)
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        logger.info("ONNX Runtime on %s (%s), %d intra-op threads: %s", self.device,
                    ", ".join(self._session.get_providers()), options.intra_op_num_threads, path)

    @classmethod
    def of(cls, model_dir: Path, config, options, file: str | None = None) -> "OnnxSession":
        """The graph a model directory serves (`config.onnx_file`, a ServingConfig's, or `file` where a kind serves
        several) on the operator's device and threads (HandlerOptions): how every kind's ONNX backend opens its session.

        Raises:
            ModelDirectoryError: no such graph, one ONNX Runtime cannot load, or a GPU asked for that it cannot use.
        """
        return cls(Path(model_dir) / (file or config.onnx_file), options.device,
                   options.pass_threads(options.device, reentrant=True))

    def stated(self, key: str) -> dict | None:
        """The JSON document the exporter wrote into the graph's metadata under `key` (what only the model's own
        libraries knew at export); None where the graph holds none.

        Raises:
            ModelDirectoryError: one that is not a JSON object (model_files' policy).
        """
        from model_handlers.model_files import parse_object

        text = self.metadata.get(key)
        return None if text is None else parse_object(text, f"{self.path}'s metadata {key!r}")

    def tokenizer(self, directory: Path, max_length: int):
        """The TokenizerView of `directory` (its tokenizer.json), making the features this graph takes: token_type_ids
        only where the exported model reads them."""
        from model_handlers.tokenization import TokenizerView

        return TokenizerView.from_directory(directory, max_length, with_type_ids="token_type_ids" in self.input_names)

    def run(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """The graph's first output for the inputs it takes (extra features, e.g. token_type_ids, are left out)."""
        return self.run_all(features)[0]

    def run_all(self, features: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Every output of the graph, in its order (BGE-M3's: dense, sparse, ColBERT)."""
        feed = {name: features[name] for name in self.input_names}
        return self._session.run(None, feed)


def resolved_backend(configured: str | None, override: str | None) -> str:
    """The backend to serve with: the operator's override, else searchbox.json's, else torch.

    Raises:
        ModelDirectoryError: an unknown backend name.
    """
    backend = override or configured or "torch"
    if backend not in BACKENDS:
        raise ModelDirectoryError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


# --- at packaging time (torch and onnx are there; never imported by a server) ------------------------------


def refuse_adapters(config, graph: str = "graph") -> None:
    """A graph holds the base model only: a directory whose tasks or adapters (a ServingConfig's) name adapters does not
    export (`graph`: what the export writes, "graphs" for a kind of several).

    Raises:
        ModelDirectoryError: naming them, and that the torch backend serves them.
    """
    with_adapters = [name for name, spec in config.tasks.items() if spec.adapter]
    if with_adapters or config.adapters:
        raise ModelDirectoryError(f"adapters ({', '.join(with_adapters or config.adapters)}) are not in the exported "
                                  f"{graph}: build it with --backend torch")


def export_graph(model, output: str | Sequence[str], example: Mapping[str, "np.ndarray"], out_path: Path,
                 torchscript: bool = False) -> None:
    """Export a transformers model's `output` (e.g. last_hidden_state, logits) for the tokenizer's inputs with torch's
    ONNX exporter, batch and sequence length dynamic, every weight inside the one file (the quantizer and ONNX
    Runtime then need nothing beside it). Several output names: a graph of that many outputs, in that order.

    `torchscript`: torch's TorchScript exporter first (the dynamo one when it refuses). On a BERT-family encoder loaded
    with eager attention it writes the graph ONNX Runtime's own fusions recognise (GELU, skip layer norm, MatMul +
    scale) where the dynamo exporter's sdpa graph keeps its per-layer mask and GELU ops unfused; measured on
    all-MiniLM-L6-v2, 2 threads, batches of 32 short texts: fp32 369 against 319 texts/s, int8 911 against 728,
    the same vectors (cosine 1.000000 against torch).

    Raises:
        ModelDirectoryError: the exporter refused the model (the message says why).
    """
    import torch

    outputs = [output] if isinstance(output, str) else list(output)

    class OneOutput(torch.nn.Module):
        """Named tensor arguments (what the exporter's dynamic shapes are keyed by), the named tensors out."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            answered = self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra)
            if isinstance(output, str):
                return getattr(answered, output)
            return tuple(getattr(answered, name) for name in outputs)

    unknown = set(example) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise ModelDirectoryError(f"the tokenizer makes inputs the export does not know: {', '.join(sorted(unknown))}")
    module = OneOutput(model)
    inputs = {name: torch.from_numpy(np.asarray(array)) for name, array in example.items()}
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: length} for name in inputs}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if torchscript:
        names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in inputs]  # forward's order
        axes = {name: {0: "batch", 1: "sequence"} for name in [*names, *outputs]}
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(module.eval(), tuple(inputs[name] for name in names), str(out_path),
                                  input_names=names, output_names=outputs, dynamic_axes=axes, opset_version=17,
                                  dynamo=False, verbose=False)
            return
        except Exception as exc:  # what TorchScript cannot trace, the dynamo exporter may still take
            logger.info("the TorchScript exporter refused the model (%s: %s); exporting with dynamo",
                        type(exc).__name__, exc)
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module.eval(), args=(), kwargs=inputs, f=str(out_path), input_names=list(inputs),
                              output_names=outputs, dynamic_shapes=shapes, dynamo=True, external_data=False,
                              opset_version=18, verbose=False)
    except Exception as exc:  # the exporter raises many types; any of them means this model does not export
        raise ModelDirectoryError(f"torch's ONNX exporter refused the model: {type(exc).__name__}: {exc}") from exc


# the first layers whose feed-forward output projection int8 keeps in fp32 (quantize_int8's measurements)
KEPT_IN_FP32 = 2


def quantize_int8(fp32_path: Path, int8_path: Path, keep_first_projections: bool = False) -> None:
    """Dynamic int8 of the linear layers (MatMul weights per output channel; activations quantized on the fly);
    `keep_first_projections`: the first two layers' feed-forward output projections kept in fp32.

    Per-channel weights measured best on all-MiniLM-L6-v2: mean cosine 0.993 against fp32 where per-tensor
    weights gave 0.96, and about 1.4x fp32's speed on this project's CPUs (8-bit block-wise weight-only
    quantization kept 0.999 but ran slower than fp32 there).

    Weights take 7 bits (`reduce_range`): on a CPU without VNNI (AVX2 only) onnxruntime multiplies uint8
    activations by int8 weights with pairwise int16 sums that saturate at full range, and the artifact may be served
    on such a CPU whatever CPU built it. Measured on an AVX2-only EPYC: the tiny SPLADE's int8 top-32 overlap
    rose from 0.945 to 0.969 (its gate asks 0.95), all-MiniLM-L6-v2's mean cosine moved from 0.9936 to 0.9934.

    The first layers' feed-forward output projections (the MatMuls, in graph order, whose weight narrows their input:
    intermediate -> hidden) are where a BERT-family encoder's activations spread widest, and quantizing those inputs
    costs most of int8's error. Measured on all-MiniLM-L6-v2's TorchScript export through the build's own gate (the
    server's pipeline): every linear layer in int8, mean cosine 0.9935 (min 0.9907), the same top-10 for 90% of the
    queries (the gate's floor: one near-tie of a 10th and 11th neighbour); the first layer's in fp32, 0.9942 (min
    0.9917), still 90%; the first two layers' in fp32, 0.9951 (min 0.9926) and 100%, at 0.87x the speed of every
    layer in int8 (0.93x for one); all six, 0.9964 (min 0.9950). Not for every model: the tiny random-headed BGE-M3 of
    the tests lost sparse dot-product Spearman (0.966 against the 0.98 its test's lowered gate asks) with the first
    layer's in fp32; the build asks it for text embeddings only.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    narrowing = None
    if keep_first_projections:
        graph = onnx.load(str(fp32_path)).graph
        widths = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
        narrowing = [node.name for node in graph.node if node.op_type == "MatMul" and node.name
                     and len(shape := widths.get(node.input[1], ())) == 2 and shape[0] > shape[1]][:KEPT_IN_FP32]
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=True, op_types_to_quantize=["MatMul"], nodes_to_exclude=narrowing or None)
