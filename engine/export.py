"""Export a test-time model to ONNX or OpenVINO (docs/deployment.md).

The exported graph is the model's :meth:`~models.interface.AnomalyModel.export_outputs`: the
image tower with its V-V path and layer tokens, the heads and the map upsampling; where the
text depends on the image (DAP's prior, the prompt flows) the text encoder too. Its inputs are
the normalised image [N, 3, S, S] and the text side's word tensors (``models.text_inputs``):
finished text pairs where no text depends on the image, else prompt templates, plus the flow
noise. The word tensors are computed here once per prompt word and stored in ``prompts.npz``;
the runtime (``engine.runtimes``) looks up each image's word and draws the seeded noise, so the
graph holds no strings and no random generator. Outputs: the map before the blur, the class
probability and, for DAP, its map score (the top-k score is taken from the map, as it depends
on the category).

The folder holds ``model.onnx`` and/or ``model.xml``/``model.bin``, ``prompts.npz`` and the
manifest ``export.json`` (method, configuration, image size, words, inputs, precision, source
checkpoint digest, thresholds). It is written under a temporary name and swapped into place.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from datasets.names import prompt_words
from models.flows import FlowNoise
from models.interface import AnomalyModel
from models.text_inputs import NOISE_NAMES, TextInputs
from utils.errors import UserError
from utils.io import write_json

log = logging.getLogger("zsad.export")

MANIFEST = "export.json"
PROMPTS = "prompts.npz"
FORMATS = ("onnx", "openvino")
FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
OUTPUTS = ("anomaly_map", "class_prob", "map_score")
EXPORT_FORMAT = 1
OPSET = 17
SHARED_NOISE = ("noise_normal", "noise_abnormal")  # [R, W]: no image axis


class ExportGraph(nn.Module):
    """``model.export_outputs`` with positional tensor inputs, as the exporter traces it."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, image: torch.Tensor, *tensors: torch.Tensor):
        return self.model.export_outputs(image, TextInputs(dict(zip(self.names, tensors))))


@contextlib.contextmanager
def tracing(model: nn.Module):
    """What tracing needs, restored afterwards: text sequences kept at full length (their EOT
    positions are graph inputs; causal attention makes the result the same) and PyTorch's fused
    attention fast path off (it has no ONNX operator)."""
    truncate = model.backbone.truncate_text
    fast = torch.backends.mha.get_fastpath_enabled()
    model.backbone.truncate_text = False
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        model.backbone.truncate_text = truncate
        torch.backends.mha.set_fastpath_enabled(fast)


def word_table(model, class_names: Sequence[str]) -> Dict[str, Any]:
    """The word tensors of every distinct prompt word of ``class_names``: ``words`` (in order)
    and, per input name, the rows stacked over the words ([U, ...])."""
    words = prompt_words(class_names, model.config.class_word)
    first: Dict[str, str] = {}
    for name, word in zip(class_names, words):
        first.setdefault(word, name)
    rows = [model.text_inputs([name]).tensors for name in first.values()]
    arrays = {key: torch.cat([r[key] for r in rows]).cpu().numpy() for key in rows[0]}
    # the text encoder runs the templates' length: cut after the last EOT of any stored word (and
    # after the deep prompts), as PyTorch cuts per batch (exact: attention is causal)
    eots = [int(v.max()) for k, v in arrays.items() if k.endswith("_eot")]
    if eots:
        deep = [p.shape[-2] for p in getattr(getattr(model, "prompts", None), "deep_prompts", [])]
        length = max(max(eots) + 1, 1 + max(deep, default=0))
        arrays = {k: v[:, :length] if k.endswith("_template") else v for k, v in arrays.items()}
    return {"words": list(first), "arrays": arrays}


def example_inputs(model, table: Dict[str, Any], batch: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Inputs of ``batch`` images for tracing and checking: random images, the first word's rows
    and, with flows, a draw of the noise."""
    size = model.backbone.image_size
    generator = torch.Generator().manual_seed(seed)
    inputs = {"image": torch.randn(batch, 3, size, size, generator=generator)}
    for key, value in table["arrays"].items():
        inputs[key] = torch.from_numpy(value[:1]).repeat(batch, *[1] * (value.ndim - 1))
    noise = model.noise_settings()
    if noise is not None:
        draw = FlowNoise(noise["seed"], noise["samples"], noise["width"], noise["official"]).draw(batch, "cpu")
        inputs.update(zip(NOISE_NAMES, draw))
    return inputs


def write_onnx(model, inputs: Dict[str, torch.Tensor], path: Path) -> None:
    """Trace the graph on ``inputs`` (the image first) and write it. The batch is fixed at the
    traced size (one image): the text side turns batch sizes into Python numbers, which a trace
    records as constants; the runtime feeds images one by one."""
    names = list(inputs)
    graph = ExportGraph(model, names[1:]).eval()
    with tracing(model), torch.no_grad(), warnings_quiet():
        torch.onnx.export(graph, tuple(inputs.values()), str(path), input_names=names, output_names=list(OUTPUTS),
                          opset_version=OPSET, dynamo=False)


@contextlib.contextmanager
def warnings_quiet():
    """The tracer warns at every Python number it records as a constant; here that is intended
    (shapes and settings fixed at export), so those warnings are not shown."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def write_openvino(onnx_path: Path, xml_path: Path) -> None:
    """Convert the ONNX graph to OpenVINO IR (weights kept fp32; inference precision is chosen
    when the runtime compiles it)."""
    ov = import_runtime("openvino")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def import_runtime(name: str):
    """The runtime package, or a one-line error saying how to install it."""
    try:
        if name == "openvino":
            import openvino as module
        elif name == "onnxruntime":
            import onnxruntime as module
        else:
            import onnx as module
    except ImportError:
        raise UserError(f"the {name} package is not installed; pip install {name} "
                        "(or pip install -r requirements-deploy.txt)") from None
    return module


def file_digest(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model(model, out: Path, formats: Sequence[str], class_names: Sequence[str], info: Dict[str, Any],
                 thresholds: Optional[dict] = None) -> Dict[str, Any]:
    """Write ``model`` (in eval mode, on the CPU) to the folder ``out`` in ``formats``; return the
    manifest. ``info``: what the manifest records of the source (method, configuration,
    backbone, checkpoint); ``thresholds``: per category, as in results.json."""
    if type(model).export_outputs is AnomalyModel.export_outputs:
        raise UserError(f"--method {info.get('method')} cannot be exported yet: its model has no export_outputs "
                        "(docs/deployment.md)")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {' '.join(formats)}: choose from {', '.join(FORMATS)}")
    import_runtime("onnx")
    if "openvino" in formats:
        import_runtime("openvino")
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an export folder (no {MANIFEST}); choose a new folder")
    table = word_table(model, class_names)
    inputs = example_inputs(model, table, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        started = time.perf_counter()
        onnx_path = work / FILES["onnx"]
        log.info("tracing %s to ONNX (opset %d)", info.get("method"), OPSET)
        write_onnx(model, inputs, onnx_path)
        if "openvino" in formats:
            log.info("converting to OpenVINO IR")
            write_openvino(onnx_path, work / FILES["openvino"])
        if "onnx" not in formats:
            onnx_path.unlink()
        np.savez(work / PROMPTS, **table["arrays"])
        manifest = {
            "format": EXPORT_FORMAT, **info, "formats": list(formats), "precision": "fp32",
            "image_size": model.backbone.image_size, "class_word": model.config.class_word,
            "words": table["words"], "inputs": {k: list(v.shape[1:]) for k, v in inputs.items()},
            "shared_inputs": [k for k in inputs if k in SHARED_NOISE], "outputs": list(OUTPUTS),
            "noise": model.noise_settings(), "thresholds": thresholds, "opset": OPSET,
            "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1)}
        write_json(work / MANIFEST, manifest)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def check_export(model, out: Path, runtime_loader, formats: Sequence[str]) -> List[Dict[str, Any]]:
    """Run every written format beside the eager model on a fresh random image with the stored
    word tensors; per format the largest difference of each output. ``runtime_loader(out,
    runtime)`` opens a graph: ``engine.runtimes.Session``, passed in as that module imports this one."""
    with np.load(out / PROMPTS) as arrays:
        table = {"arrays": {k: arrays[k] for k in arrays.files}}
    inputs = example_inputs(model, table, 1, seed=1)
    with torch.no_grad():
        eager = model.export_outputs(inputs["image"], TextInputs({k: v for k, v in inputs.items() if k != "image"}))
    rows = []
    for fmt in formats:
        session = runtime_loader(out, "onnxruntime" if fmt == "onnx" else "openvino")
        got = session.run({k: v.numpy() for k, v in inputs.items()})
        rows.append({"format": fmt, **{name: float(np.abs(g - e.numpy()).max())
                                        for name, g, e in zip(OUTPUTS, got, eager)}})
    return rows
