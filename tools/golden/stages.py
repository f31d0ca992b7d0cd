"""Our side of the golden comparisons.

Builds our models on the golden CLIP and data exactly as ``test.py`` does (checkpoint reader,
compatibility switch, backbone, weights) and computes every stage the fixtures hold, under the
fixtures' key names, so that ``tests/test_golden.py`` only pairs arrays and asserts, and
``make_golden.py`` can freeze our own defaults with the same code. When the model API changes,
this adapter changes; the fixtures and the assertions do not.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datasets.meta import MetaDataset, collate
from models import methods
from models.backbone import build_backbone
from models.factory import apply_compat, make_config, model_from_checkpoint, read_checkpoint
from models.scoring import fuse_image_scores
from tools.golden.golden_checkpoints import (ANOMALYCLIP_SEED, BAYES_PFL_SEED, FAPROMPT_SEED, checksum,
                                             seeded_parameters)
from tools.golden.golden_clip import IMAGE_SIZE, register_golden_model, write_golden_clip
from tools.golden.golden_data import write_dataset
from utils.filters import gaussian_blur

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "golden"
METHODS = {"faprompt": ("prompt_learner", FAPROMPT_SEED), "bayes_pfl": ("MyModel", BAYES_PFL_SEED),
           "anomalyclip": ("prompt_learner", ANOMALYCLIP_SEED)}
# our loss-term names → the fixtures' (named when the methods were separate models)
FIXTURE_TERMS = {"faprompt": {"map_first": "map1", "map_final": "map2"}, "bayes_pfl": {"map": "segmentation"}}
Arrays = Dict[str, np.ndarray]


def fixture(name: str) -> Arrays:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def provenance() -> dict:
    return json.loads((FIXTURES / "provenance.json").read_text())


def manifest(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@dataclass
class Golden:
    """The golden CLIP file, its open_clip name, the data and the official-format checkpoints."""

    clip: Path
    model: str
    data: Path
    images: torch.Tensor  # [N, 3, S, S] in meta.json order
    masks: torch.Tensor  # [N, S, S]
    labels: torch.Tensor  # [N]
    classes: List[str]
    paths: List[str]  # relative to the data root
    checkpoints: Dict[str, Path]

    def batch(self, order: Sequence[str]):
        """(images, masks, labels, classes) in the order of ``order`` (relative paths)."""
        index = torch.tensor([self.paths.index(str(p)) for p in order])
        return self.images[index], self.masks[index], self.labels[index], [self.classes[i] for i in index]


def prepare(work: Path) -> Golden:
    """Rebuild the tiny CLIP, the data and the seeded checkpoints in ``work``; every rebuild is
    checked against the checksums recorded when the fixtures were made."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    recorded = provenance()
    model = register_golden_model(work)
    clip = work / "golden_clip.pt"
    value = write_golden_clip(clip)
    if value != recorded["clip_checksum"]:
        raise AssertionError(f"the golden CLIP rebuilt differently ({value} != {recorded['clip_checksum']})")
    with np.load(FIXTURES / "data.npz") as data:
        write_dataset(work / "data", {k: data[k] for k in data.files})
    dataset = MetaDataset(work / "data", "test", image_size=IMAGE_SIZE)
    batch = collate([dataset[i] for i in range(len(dataset))])
    checkpoints = {}
    for method, (key, seed) in METHODS.items():
        entries = manifest(f"{method}_tiny_manifest")
        values = seeded_parameters(entries, method, seed)
        if checksum(values) != recorded[f"{method}_checkpoint_checksum"]:
            raise AssertionError(f"the seeded {method} checkpoint rebuilt differently")
        state = {k: torch.from_numpy(values[k]) if k in values
                 else torch.zeros(e["shape"], dtype=getattr(torch, e["dtype"])) for k, e in entries.items()}
        checkpoints[method] = work / f"{method}_official.pth"
        torch.save({key: state}, checkpoints[method])
    root = dataset.root
    return Golden(clip=clip, model=model, data=root, images=batch["image"], masks=batch["mask"],
                  labels=batch["label"], classes=list(batch["cls_name"]),
                  paths=[str(Path(p).relative_to(root)) for p in batch["img_path"]], checkpoints=checkpoints)


def official_test_settings(method: str) -> Dict[str, object]:
    """Settings of the official test run that its checkpoint does not hold (Bayes-PFL's R,
    AnomalyCLIP's layers)."""
    if method == "bayes_pfl":
        return {"sample_num": provenance()["bayes_pfl_sample_num"]}
    if method == "anomalyclip":
        return {"features_list": tuple(provenance()["anomalyclip_features_list"])}
    return {}


def build(golden: Golden, method: str, compat: str):
    """Our model for an official checkpoint, built as ``test.py`` builds it."""
    checkpoint = read_checkpoint(str(golden.checkpoints[method]))
    config = make_config(checkpoint.method, {**checkpoint.config, **official_test_settings(method)})
    backbone = dataclasses.replace(checkpoint.backbone, model=golden.model, pretrained=str(golden.clip),
                                   image_size=IMAGE_SIZE)
    config, backbone = apply_compat(method, config, backbone, compat)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_from_checkpoint(checkpoint, config, build_backbone(backbone))
    return model.eval()


def _numpy(values: Dict[str, torch.Tensor]) -> Arrays:
    return {k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v) for k, v in values.items()}


def official_names(method: str) -> Dict[str, str]:
    """Our parameter name of every official key, read off the official checkpoint map itself:
    each official tensor is filled with its own index and followed through the map."""
    entries = manifest(f"{method}_tiny_manifest")
    keys = list(entries)
    probe = {k: torch.full(e["shape"], float(i)) if e["dtype"].startswith("float")
             else torch.zeros(e["shape"], dtype=torch.long) for i, (k, e) in enumerate(entries.items())}
    ours, _ = methods.get(method).checkpoint.to_ours(probe)
    return {keys[int(v.flatten()[0])]: k for k, v in ours.items() if v.is_floating_point() and v.numel()}


def gradients(model, method: str, reference: Arrays) -> Arrays:
    """Our gradients under the official names and in the fixture's form (full or sampled)."""
    params = dict(model.named_parameters(remove_duplicate=False))  # shared modules under every alias
    out: Arrays = {}
    for name, ours in official_names(method).items():
        grad = params[ours].grad
        if grad is None:
            grad = torch.zeros_like(params[ours])  # no gradient reached it: compared as zeros
        key = f"train/grad/{name}"
        if key in reference:
            out[key] = grad.detach().numpy().reshape(reference[key].shape)
        elif f"{key}/index" in reference:
            flat = grad.detach().double().flatten()
            out[f"{key}/sample"] = flat[torch.from_numpy(reference[f"{key}/index"])].numpy()
            out[f"{key}/sum"] = np.array(float(flat.sum()))
            out[f"{key}/norm"] = np.array(float(flat.norm()))
    return out


# ---------------------------------------------------------------------- FAPrompt
def faprompt_stages(model, golden: Golden) -> Arrays:
    """Every test-time stage of FAPrompt on the golden images (one batch)."""
    backbone, prompts = model.backbone, model.prompts
    words = model.words(golden.classes)
    with torch.no_grad():
        feats = model.encode_images(golden.images)
        normal, abnormal = prompts.static_features(backbone, words)
        index = torch.tensor([sorted(set(words)).index(w) for w in words])
        out = model(golden.images, golden.classes)
        dap_abnormal = prompts.pairs(backbone, words, prior=out.prior)[1].mean(1)
    patches = F.normalize(feats.vv_proj, dim=-1)
    first, final = out.first, out.final
    stages = {
        "tokens/normal": backbone.tokenize([prompts.template_text("object", False)])[0],
        "tokens/abnormal": backbone.tokenize([prompts.template_text("object", True)])[0],
        "eot/normal": np.array(int(prompts.templates(backbone, ["object"], abnormal=False)[1][0])),
        "eot/abnormal": np.array(int(prompts.templates(backbone, ["object"], abnormal=True)[1][0])),
        "image/cls_raw": feats.cls_raw, "image/vv_proj": feats.vv_proj[:2],
        "text/static_normal": normal[index], "text/static_abnormal": abnormal[index][:1],
        "text/dap_abnormal_mean": dap_abnormal,
        "text/static": first.pairs[:, :, 0], "text/dap": final.pairs[:, :, 0],
        "grid1": first.similarity_grids[0], "grid2": final.similarity_grids[0],
        "map1": first.similarity_maps[0], "map2": final.similarity_maps[0],
        "dap/selected": out.selected,
        "dap/selected_tokens": torch.gather(patches, 1, out.selected[..., None].expand(-1, -1, patches.shape[-1])),
        "dap/prior": out.prior, "class_prob": out.class_prob, "map_score": out.map_score,
        "image_score": out.fused_score, "anomaly_map": out.anomaly_map,
        "map_blurred": gaussian_blur(out.anomaly_map, model.config.sigma),
    }
    return _numpy(stages)


def train_step(model, golden: Golden, order: Sequence[str], reference: Arrays) -> Arrays:
    """Loss terms and gradients (under the official names) of one training step on the batch in
    ``order``; for the methods whose training draws no noise (FAPrompt, AnomalyCLIP)."""
    images, masks, labels, classes = golden.batch(order)
    model.train()
    model.zero_grad(set_to_none=True)
    terms = model.loss(model(images, classes), masks, labels)
    terms["total"].backward()
    model.eval()
    names = FIXTURE_TERMS.get(model.method, {})
    out = {f"train/{names.get(k, k)}": np.array(float(v.detach())) for k, v in terms.items()}
    out.update(gradients(model, model.method, reference))
    return out


# ---------------------------------------------------------------------- Bayes-PFL
class FixedNoise:
    """Test-time flow noise given in advance: context [N, R, D], normal and abnormal [R, D]."""

    def __init__(self, context: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor):
        self.context, self.normal, self.abnormal = context, normal, abnormal
        self.offset = 0

    def draw(self, n_images: int, device):
        context = self.context[self.offset:self.offset + n_images]
        self.offset += n_images
        return context.to(device), self.normal.to(device), self.abnormal.to(device)


def official_noise(reference: Arrays, samples: int) -> FixedNoise:
    """The official test's recorded draws ([N, 3R, D] per image: context, normal, abnormal);
    the state samples of the first image serve every image, as in the official code."""
    noise = torch.from_numpy(reference["noise"])
    r = samples
    return FixedNoise(noise[:, :r], noise[0, r:2 * r], noise[0, 2 * r:])


def bayes_pfl_stages(model, golden: Golden, noise: Optional[FixedNoise]) -> Arrays:
    """Every test-time stage of Bayes-PFL on the golden images (one batch). ``noise`` replaces
    the model's own seeded draws (None: the model's own)."""
    cfg, backbone = model.config, model.backbone
    model.start_evaluation()
    if noise is None:
        eps = model.noise.draw(len(golden.classes), backbone.device)
        model.start_evaluation()  # the forward pass draws the same numbers again
    else:
        noise.offset = 0
        model.noise = noise
        eps = (noise.context, noise.normal, noise.abnormal)
    with torch.no_grad():
        feats = model.encode_images(golden.images)
        out = model(golden.images, golden.classes)
        flow_context = model.flows.context(feats.cls, eps[0]).z
        flow_normal, flow_abnormal = model.flows.normal(eps[1]).z, model.flows.abnormal(eps[2]).z
        n, _, k, e = out.text.shape
        text = out.text.reshape(n, 2 * k, e)
        maps = out.anomaly_map
        map_score = methods.get("bayes_pfl").score.topk_scores(maps, golden.classes)
        image_score = torch.empty(n, dtype=torch.float64)
        for cls in dict.fromkeys(golden.classes):
            index = torch.tensor([i for i, c in enumerate(golden.classes) if c == cls])
            image_score[index] = fuse_image_scores(out.class_prob[index].double(), map_score[index].double(), "minmax")
        stages = {
            "tokens": torch.stack([backbone.tokenize([model.bank.template_text(w)])[0]
                                   for w in model.words(golden.classes)]),
            "image/cls": feats.cls, "flow/context": flow_context, "flow/normal": flow_normal,
            "flow/abnormal": flow_abnormal, "text": text, "image_logits": out.class_logits.reshape(n, 2 * k),
            "class_prob": out.class_prob, "anomaly_map": maps, "map_score": map_score, "image_score": image_score,
            "map_blurred": gaussian_blur(maps, cfg.sigma),
        }
        for i, layer in enumerate(cfg.features_list):
            stages[f"image/patch_raw/{layer}"] = feats.patch_raw[layer][:2]
            dense = model.rca.dense(i, feats.patch_raw[layer][:1])
            stages[f"rca/dense/{layer}"] = dense
            stages[f"rca/text/{layer}"] = model.rca.attend(text[:1], dense)
            stages[f"pixel_diff/{layer}"] = out.final.rca_diffs[i][:1]
    return _numpy(stages)


def bayes_pfl_train(model, golden: Golden, order: Sequence[str], seed: int, reference: Arrays) -> Arrays:
    """One stage-1 training step on the batch in ``order``, the global generator seeded with
    ``seed`` right before it (as the official loop's first batch); also each flow's z₀, z_K,
    log-det and KL for the recorded training noise."""
    images, masks, labels, classes = golden.batch(order)
    stage = int(model.stage)
    model.set_stage(1)  # official checkpoints are stage 2; the recorded step is the official stage 1
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(images, classes)
    terms = model.loss(out, masks, labels)
    terms["total"].backward()
    names = FIXTURE_TERMS["bayes_pfl"]
    result = {f"train/{names.get(k, k)}": np.array(float(v.detach())) for k, v in terms.items()}
    result["train/pair"] = np.array(out.pair)
    n, e = out.text.shape[0], out.text.shape[-1]
    result["train/text"] = out.text.reshape(n, -1, e).detach().numpy()  # R = 1: [N, 2B, E]
    result["train/image_logits_pair"] = out.class_logits[:, :, 0].detach().numpy()
    result["train/pixel_diff_pair/24"] = out.final.rca_diffs[-1][:, 0].detach().numpy()
    result.update(gradients(model, "bayes_pfl", reference))
    official_kl = model.config.official_state_kl
    with torch.no_grad():
        feats = model.encode_images(images)
        context_noise = torch.from_numpy(reference["train/noise/context"])[:, None]
        samples = {"context": model.flows.context(feats.cls, context_noise, with_kl=True)}
        for name, flow in (("normal", model.flows.normal), ("abnormal", model.flows.abnormal)):
            samples[name] = flow(torch.from_numpy(reference[f"train/noise/{name}"]), n, with_kl=True,
                                 official_kl=official_kl)
    for name, sample in samples.items():
        result[f"train/kl/{name}"] = np.array(float(sample.kl))
        result[f"train/z0/{name}"] = sample.z0.reshape(-1, sample.z0.shape[-1]).numpy()
        result[f"train/zk/{name}"] = sample.z.reshape(-1, sample.z.shape[-1]).numpy()
        result[f"train/log_det/{name}"] = sample.log_det.reshape(-1).numpy()
    model.set_stage(stage)
    model.eval()
    return result


# ---------------------------------------------------------------------- AnomalyCLIP
def anomalyclip_stages(model, golden: Golden) -> Arrays:
    """Every test-time stage of AnomalyCLIP on the golden images (one batch)."""
    backbone, prompts, cfg = model.backbone, model.prompts, model.config
    words = model.words(golden.classes)
    with torch.no_grad():
        feats = model.encode_images(golden.images)
        normal, abnormal = prompts.static_features(backbone, words)
        out = model(golden.images, golden.classes)
    stages = {
        "tokens/normal": backbone.tokenize([prompts.template_text("object", False)])[0],
        "tokens/abnormal": backbone.tokenize([prompts.template_text("object", True)])[0],
        "text/normal": normal[0], "text/abnormal": abnormal[0, 0], "image/cls_raw": feats.cls_raw,
        "class_prob": out.class_prob, "image_score": out.class_prob, "anomaly_map": out.anomaly_map,
        "map_blurred": gaussian_blur(out.anomaly_map, cfg.sigma),
    }
    for i, layer in enumerate(cfg.features_list):
        stages[f"image/layer/{layer}"] = feats.vv_layers[layer][:2]
        stages[f"grid/{layer}"] = out.final.similarity_grids[i]
        stages[f"map/{layer}"] = out.final.similarity_maps[i].permute(0, 2, 3, 1)
    return _numpy(stages)
