"""Run an exported model (``engine.export``) with onnxruntime or OpenVINO (docs/deployment.md).

:class:`ExportedModel` is the engine's model interface over a compiled graph: the evaluation,
``test.py --runtime`` and the Python API call it as they call a PyTorch model. It maps each
image's category to its prompt word's stored tensors, draws the seeded flow noise in the
dataset's image order (as the PyTorch model does), runs the graph, and takes the top-k map
score from the map where the method uses it. Precision: ``fp32`` everywhere; ``bf16`` on
OpenVINO (its CPU plugin computes in bfloat16 where the processor has the instructions).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from datasets.names import prompt_words
from engine.export import EXPORT_FORMAT, FILES, MANIFEST, PROMPTS, import_runtime
from engine.thresholds import Decision
from models import methods
from models.factory import make_config
from models.flows import FlowNoise
from models.interface import AnomalyModel
from models.scoring import Prediction
from models.text_inputs import NOISE_NAMES
from utils.errors import UserError

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


def read_manifest(directory: Path, flag: str = "--exported") -> Dict[str, Any]:
    """The export folder's manifest, checked; bad folders raise :class:`UserError`."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise UserError(f"{flag} {directory}: folder not found; write one with python export.py")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{flag} {directory}: no {MANIFEST}; it is not a folder written by export.py") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{flag} {path}: unreadable ({err}); export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise UserError(f"{flag} {path}: not an export manifest of format {EXPORT_FORMAT}; export the model again")
    if manifest.get("method") not in methods.names():
        raise UserError(f"{flag} {path}: unknown method {manifest.get('method')!r}")
    return manifest


class Session:
    """One compiled graph: :meth:`run` maps named numpy inputs to the three outputs."""

    def __init__(self, directory: Path, runtime: str, precision: str = "fp32", threads: Optional[int] = None,
                 manifest: Optional[Dict[str, Any]] = None):
        self.directory, self.runtime, self.precision = Path(directory), runtime, precision
        self.manifest = manifest if manifest is not None else read_manifest(directory)
        fmt = "onnx" if runtime == "onnxruntime" else "openvino"
        if runtime not in PRECISIONS:
            raise UserError(f"--runtime {runtime}: an exported model runs on {' or '.join(PRECISIONS)}")
        if precision not in PRECISIONS[runtime]:
            raise UserError(f"--precision {precision}: {runtime} runs {' or '.join(PRECISIONS[runtime])} "
                            "(bf16: --runtime openvino)")
        path = self.directory / FILES[fmt]
        if fmt not in self.manifest.get("formats", []) or not path.is_file():
            raise UserError(f"--exported {directory} has no {fmt} model ({path.name}); export with --format {fmt}")
        module = import_runtime(runtime)
        threads = threads or torch.get_num_threads()
        try:
            if runtime == "onnxruntime":
                options = module.SessionOptions()
                options.intra_op_num_threads = threads
                options.log_severity_level = 3
                self._session = module.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                self._names = [i.name for i in self._session.get_inputs()]
            else:
                config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                          "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
                self._session = module.Core().compile_model(str(path), "CPU", config)
                expected = set(self.manifest["inputs"])  # a port can carry several names
                self._names = [next((n for n in sorted(i.get_names()) if n in expected), i.get_any_name())
                               for i in self._session.inputs]
        except Exception as err:  # the runtimes raise their own types for a damaged file
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"--exported {path}: {runtime} cannot load it ({first}); export the model again") from None

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """anomaly_map [N, S, S], class_prob [N], map_score [N] (float32)."""
        feeds = {name: feeds[name] for name in self._names}
        if self.runtime == "onnxruntime":
            return self._session.run(None, feeds)
        result = self._session(feeds)
        return [np.asarray(result[output]) for output in self._session.outputs]


class ExportedModel(AnomalyModel):
    """An exported model behind the engine's model interface (test time only).

    Args:
        directory: the export folder; runtime: ``onnxruntime`` or ``openvino``;
        precision: ``fp32`` or (OpenVINO) ``bf16``; config: the method configuration the
        engine runs with (the manifest's, with test-time settings such as ``sigma`` on top);
        manifest: the folder's, where the caller has read it already.
    """

    def __init__(self, directory, runtime: str, precision: str = "fp32", config=None,
                 manifest: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.session = Session(Path(directory), runtime, precision, manifest=manifest)
        manifest = self.manifest = self.session.manifest
        self.method = manifest["method"]
        self.config = config if config is not None else make_config(self.method, manifest["config"])
        self.score_rule = methods.get(self.method).score_rule(self.config)
        self.image_size = int(manifest["image_size"])
        prompts = Path(directory) / PROMPTS
        try:
            with np.load(prompts) as arrays:
                self.table = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError) as err:
            raise UserError(f"--exported {prompts}: unreadable ({err}); export the model again") from None
        self.words = list(manifest["words"])
        self.noise: Optional[FlowNoise] = None

    def start_evaluation(self, seed: Optional[int] = None, sample_num: Optional[int] = None) -> None:
        settings = self.manifest.get("noise")
        if settings is None:
            return
        samples = settings["samples"] if sample_num is None else sample_num
        if samples != settings["samples"]:
            raise UserError(f"--sample_num {samples}: this model was exported with {settings['samples']} "
                            "flow samples; export it again with that --sample_num")
        seed = getattr(self.config, "seed", settings["seed"]) if seed is None else seed
        self.noise = FlowNoise(seed, samples, settings["width"], settings["official"])

    def skip_noise(self, images: int) -> None:
        if self.noise is not None and images > 0:
            self.noise.draw(images, "cpu")

    def check_classes(self, class_names: Sequence[str]) -> List[str]:
        """The prompt words of ``class_names``; a word the export did not store is a :class:`UserError`."""
        words = prompt_words(class_names, self.manifest["class_word"])
        missing = sorted(set(words) - set(self.words))
        if missing:
            raise UserError(f"the exported model has no prompts for the word {missing[0]!r} (exported for "
                            f"{', '.join(self.words[:6])}); export again with --class_names or --data_path "
                            "naming that category")
        return words

    def feeds(self, images: torch.Tensor, class_names: Sequence[str]) -> Dict[str, np.ndarray]:
        """The graph's inputs for a batch: the images, each one's word rows and the noise."""
        words = self.check_classes(class_names)
        index = np.array([self.words.index(w) for w in words])
        feeds = {"image": images.detach().float().cpu().numpy()}
        feeds.update({name: rows[index] for name, rows in self.table.items()})
        if self.manifest.get("noise") is not None:
            if self.noise is None:
                self.start_evaluation()
            feeds.update({name: t.numpy() for name, t in zip(NOISE_NAMES, self.noise.draw(len(images), "cpu"))})
        return feeds

    def predict(self, images: Optional[torch.Tensor], class_names: Sequence[str], features=None) -> Prediction:
        if images is None:
            raise UserError("an exported model scores images, not cached features (drop --feature_cache)")
        if images.shape[-1] != self.image_size:
            raise UserError(f"images of {images.shape[-1]} px given to a model exported at {self.image_size} px")
        feeds = self.feeds(images, class_names)
        shared = set(self.manifest.get("shared_inputs", []))
        outputs = [self.session.run({k: v if k in shared else v[i:i + 1] for k, v in feeds.items()})
                   for i in range(len(images))]  # the graph takes one image (engine.export)
        maps, class_prob, score = (torch.from_numpy(np.concatenate([o[j] for o in outputs])).float()
                                   for j in range(3))
        if self.score_rule.map_score == "topk":
            score = self.score_rule.topk_scores(maps, class_names)
        return Prediction(maps, class_prob, score)

    def fewshot_tokens(self, images, features=None):
        raise UserError("few-shot references need the PyTorch model (--runtime torch): an exported model "
                        "returns maps only")


def load_exported(args, config, manifest: Dict[str, Any]) -> ExportedModel:
    """test.py's exported model: ``args.exported`` (whose ``manifest`` configure read) on
    ``args.runtime`` (auto: OpenVINO where it was exported to it, else onnxruntime) at
    ``args.precision`` (auto: fp32)."""
    runtime = args.runtime
    if runtime == "torch":
        raise UserError("--runtime torch runs a checkpoint (--checkpoint_path); --exported runs on onnxruntime "
                        "or openvino")
    if runtime == "auto":
        runtime = "openvino" if "openvino" in manifest.get("formats", []) else "onnxruntime"
    if getattr(args, "k_shot", 0):
        raise UserError("--k_shot needs the PyTorch model (--checkpoint_path): an exported model returns maps only")
    precision = "fp32" if args.precision == "auto" else args.precision
    return ExportedModel(args.exported, runtime, precision, config, manifest)


def check_torch_runtime(args) -> None:
    """A checkpoint runs on PyTorch: --runtime onnxruntime/openvino need an export."""
    if getattr(args, "runtime", "auto") not in ("auto", "torch"):
        raise UserError(f"--runtime {args.runtime} runs an exported model: pass --exported DIR "
                        "(written by python export.py --checkpoint_path ...)")


def exported_thresholds(manifest: Dict[str, Any], class_name: str) -> Decision:
    """The thresholds an export stores for ``class_name`` (export.py --thresholds), else none."""
    levels = (manifest.get("thresholds") or {}).get(class_name)
    if not levels:
        return Decision()
    return Decision(levels.get("image"), levels.get("pixel"),
                    f"{manifest.get('thresholds_source')} ({class_name}, stored in the export)")
