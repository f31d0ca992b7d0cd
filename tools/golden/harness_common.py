"""What the official-code harnesses share: importing an official checkout, module manifests,
the Pillow fix for their datasets, the class-list restriction, and the recorders of one
official training step."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import types
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch

import official_stubs
from golden_checkpoints import checksum, seeded_parameters
from recorder import gradient_summary, patched


def harness_args(*extra: str) -> Tuple[argparse.Namespace, Path, Path]:
    """The flags every harness takes (plus ``extra`` required ones); puts the official checkout
    first on ``sys.path``. Returns (args, official checkout, work folder)."""
    parser = argparse.ArgumentParser()
    for flag in ("--official", "--work", "--clip", "--data", "--out") + extra:
        parser.add_argument(flag, required=True)
    parser.add_argument("--image_size", type=int, default=48)
    args = parser.parse_args()
    official, work = Path(args.official).resolve(), Path(args.work).resolve()
    sys.path.insert(0, str(official))
    torch.set_num_threads(2)
    return args, official, work


def full_size_learner_manifest(learner_class) -> dict:
    """Keys, shapes and dtypes of an official prompt learner (FAPrompt's, AnomalyCLIP's) at
    ViT-L-14-336 size (text width 768, depth 9, deep prompts of 4); only the CLIP's word
    embeddings, ``ln_final`` and dtype are read to build it."""
    stand_in = types.SimpleNamespace(
        transformer=types.SimpleNamespace(get_cast_dtype=lambda: torch.float32),
        ln_final=torch.nn.LayerNorm(768), token_embedding=torch.nn.Embedding(49408, 768))
    return manifest(learner_class(stand_in, {"Prompt_length": 12, "learnabel_text_embedding_depth": 9,
                                             "learnabel_text_embedding_length": 4}))


def seeded(module_class, values: Dict[str, np.ndarray]):
    """A subclass of an official module that loads the seeded ``values`` after its own
    initialisation (buffers stay as the module derives them) and keeps its last instance."""

    class Seeded(module_class):
        instance = None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.load_state_dict({**self.state_dict(), **{k: torch.from_numpy(v) for k, v in values.items()}})
            Seeded.instance = self

    return Seeded


def seeded_learner_checkpoint(load: Callable, learner_class, design: dict, clip_path: str, method: str, seed: int,
                              checkpoint: Path) -> Tuple[Dict[str, np.ndarray], dict, Dict[str, np.ndarray]]:
    """Build the official ``prompt_learner`` on the tiny CLIP, draw its seeded parameters, save
    ``{"prompt_learner": ...}`` to ``checkpoint``; (values, tiny manifest, arrays to record)."""
    clip, _ = load(clip_path, device="cpu", design_details=design)
    learner = learner_class(clip, design)
    tiny_manifest = manifest(learner)
    values = seeded_parameters(tiny_manifest, method, seed)
    learner.load_state_dict({**learner.state_dict(), **{k: torch.from_numpy(v) for k, v in values.items()}})
    torch.save({"prompt_learner": learner.state_dict()}, checkpoint)
    arrays = {"checkpoint_checksum": np.array(checksum(values))}
    for key in ("tokenized_prompts_pos", "tokenized_prompts_neg"):
        arrays[f"tokens/{key}"] = learner.state_dict()[key].numpy().astype(np.int64)
    return values, tiny_manifest, arrays


def manifest(module: torch.nn.Module) -> dict:
    """Every state-dict key of ``module`` with its shape, dtype and kind (parameter or buffer)."""
    params = {name for name, _ in module.named_parameters()}
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                "kind": "parameter" if k in params else "buffer"} for k, v in module.state_dict().items()}


def official_modules(official: Path, name: str, data: str, *extra: str) -> types.SimpleNamespace:
    """The modules of an official checkout that shares AnomalyCLIP's layout (FAPrompt,
    AnomalyCLIP), imported from inside it (they open files by relative path): ``lib`` (its CLIP
    package), ``clip`` (the model module), ``dataset``, ``test`` and ``train`` (its scripts,
    loaded as ``official_<name>_test`` / ``_train``), the ``extra`` modules by name, and
    ``classes``, the categories of the dataset at ``data``, to which the dataset's class lists
    are cut (:func:`restrict_classes`; its masks get :func:`pillow_masks`)."""
    with official_stubs.working_directory(str(official)):
        lib = importlib.import_module("AnomalyCLIP_lib")
        modules = types.SimpleNamespace(
            lib=lib, clip=importlib.import_module("AnomalyCLIP_lib.AnomalyCLIP"),
            dataset=importlib.import_module("dataset"),
            **{module: importlib.import_module(module) for module in extra})
        modules.test = official_stubs.load_module(f"official_{name}_test", str(official / "test.py"))
        modules.train = official_stubs.load_module(f"official_{name}_train", str(official / "train.py"))
    modules.classes = list(json.loads((Path(data) / "meta.json").read_text())["test"])
    pillow_masks(modules.dataset)
    restrict_classes(modules.dataset, modules.classes)
    return modules


def pillow_masks(module) -> None:
    """Current Pillow rejects ``Image.fromarray(float64 zeros, mode='L')``: cast masks to uint8."""
    from PIL import Image

    def fromarray(array, mode=None):
        array = np.asarray(array)
        if mode == "L" and array.dtype != np.uint8:
            array = array.astype(np.uint8)
        return Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)

    module.Image = types.SimpleNamespace(open=Image.open, fromarray=fromarray, new=Image.new)


def restrict_classes(dataset_module, present: List[str]) -> None:
    """The official test loops iterate a fixed class list; keep the classes present (an absent
    one would reach ``torch.cat([])``)."""
    original = dataset_module.generate_class_info

    def class_info(name):
        obj_list, ids = original(name)
        return [c for c in obj_list if c in present], ids

    dataset_module.generate_class_info = class_info


class TrainingStep:
    """Records one official training step: every loss call, the total passed to ``backward``,
    the batch order and the gradients at the first optimiser step (under the names of the
    module ``named_parameters`` returns)."""

    def __init__(self, named_parameters: Callable[[], Dict[str, torch.nn.Parameter]]):
        self.terms: Dict[str, List[float]] = {"total": []}
        self.order: List[str] = []
        self.grads: Dict[str, np.ndarray] = {}
        self._named = named_parameters

    def loss(self, cls, key: str):
        """A subclass of the loss class ``cls`` whose every value is recorded under ``key``."""
        terms = self.terms.setdefault(key, [])

        class Recording(cls):
            def forward(self, *a, **k):
                value = super().forward(*a, **k)
                terms.append(float(value.detach()))
                return value

        return Recording

    def functional(self):
        """``torch.nn.functional`` with ``cross_entropy`` recorded."""
        namespace = types.SimpleNamespace(**{k: getattr(torch.nn.functional, k) for k in dir(torch.nn.functional)
                                             if not k.startswith("__")})
        namespace.cross_entropy = self.function(torch.nn.functional.cross_entropy, "cross_entropy")
        return namespace

    def function(self, fn, key: str):
        terms = self.terms.setdefault(key, [])

        def recorded(*a, **k):
            value = fn(*a, **k)
            terms.append(float(value.detach()))
            return value

        return recorded

    def adam(self):
        step = self

        class RecordingAdam(torch.optim.Adam):
            def step(self, closure=None):
                if not step.grads:
                    names = {id(p): n for n, p in step._named().items()}
                    for group in self.param_groups:
                        for p in group["params"]:
                            if p.grad is not None and id(p) in names:
                                step.grads.update(gradient_summary(names[id(p)], p.grad))
                return super().step(closure)

        return RecordingAdam

    def backward(self):
        original, terms = torch.Tensor.backward, self.terms["total"]

        def recorded(tensor, *a, **k):
            terms.append(float(tensor.detach()))
            return original(tensor, *a, **k)

        return recorded

    def loader(self):
        order = self.order

        class RecordingLoader(torch.utils.data.DataLoader):
            def __iter__(self):
                for items in super().__iter__():
                    order.extend(items["img_path"])
                    yield items

        return RecordingLoader

    @contextlib.contextmanager
    def recording_loop(self, train_module, losses: Dict[str, Tuple[type, str]]) -> Iterator[None]:
        """For the block, a ``train.py`` of AnomalyCLIP's layout (FAPrompt, AnomalyCLIP) records
        the step: its loss classes (``losses``: name in ``train_module`` → (class, key)), its
        ``F.cross_entropy``, the batch order, the total and the gradients."""
        with contextlib.ExitStack() as stack:
            for name, (cls, key) in losses.items():
                stack.enter_context(patched(train_module, name, self.loss(cls, key)))
            for target, attribute, replacement in ((train_module, "F", self.functional()),
                                                   (torch.optim, "Adam", self.adam()),
                                                   (torch.utils.data, "DataLoader", self.loader()),
                                                   (torch.Tensor, "backward", self.backward())):
                stack.enter_context(patched(target, attribute, replacement))
            yield

    def arrays(self, data_root) -> Dict[str, np.ndarray]:
        from pathlib import Path

        out = {f"train/{k}": np.array(v, dtype=np.float64) for k, v in self.terms.items()}
        out["train/order"] = np.array([str(Path(p).resolve().relative_to(Path(data_root).resolve()))
                                       for p in self.order])
        out.update({f"train/{k}": v for k, v in self.grads.items()})
        return out
