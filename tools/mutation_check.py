"""Mutation check: does the test suite notice one-line misreadings of the methods (docs/methods/)
and of the dataset protocols (docs/datasets.md)?

Each mutation below replaces one exact piece of code with a plausible misreading of the
backbone, method and metric descriptions in docs/ (its last column says what they say). For
each, the repository is copied to a temporary folder, the mutation applied, and the suite run
(the golden, loss-definition and registry tests first, then the rest, stopping at the first
failure). A mutation that leaves the suite green "survives": the formula it touches is not
pinned by any test.

    python tools/mutation_check.py              # all mutations
    python tools/mutation_check.py -k rca       # those whose name contains "rca"
    python tools/mutation_check.py --list

A developer tool, not part of CI (a full run takes a few hours on two cores: each mutation
runs the golden tests, then the rest of the suite, stopping at the first failure). Exit code
1 if any mutation survives or no longer applies (its code changed: update the list).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
FIRST = ["tests/test_golden.py", "tests/test_winclip.py", "tests/test_april_gan.py", "tests/test_vcp_clip.py",
         "tests/test_adaclip.py", "tests/test_losses.py", "tests/test_registry.py"]
PHASES = [FIRST, ["tests"] + [f"--ignore={path}" for path in FIRST]]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    spec: str  # what the method docs say, briefly


MUTATIONS: List[Mutation] = [
    # -- the four misreadings that went unnoticed before the golden tests
    Mutation("flow noise scale exp(lv/2)", "models/flows.py", "z0 = mean + eps * torch.exp(0.25 * log_var)",
             "z0 = mean + eps * torch.exp(0.5 * log_var)", "Bayes-PFL: z0 = mu + eps * exp(lv/4)"),
    Mutation("rca scale from the head width", "models/heads.py",
             "self.scale = embed_dim ** -0.5  # over the full width, not the head width",
             "self.scale = (embed_dim // heads) ** -0.5", "Bayes-PFL: scale 768^-0.5, not 192^-0.5"),
    Mutation("faprompt grid upsampling align_corners", "models/model.py",
             "out.similarity_maps.append(upsample_grid(probs, size, align_corners=False))",
             "out.similarity_maps.append(upsample_grid(probs, size, align_corners=True))",
             "FAPrompt: bilinear, align_corners=False"),
    Mutation("cap orthogonality without abs", "models/losses.py", "return cosine.abs()[..., upper].sum()",
             "return cosine[..., upper].sum()", "FAPrompt: sum of |cos|"),
    # -- CAP
    Mutation("cap abnormal mean after normalising", "models/cap.py", "        mean = abnormal.mean(1)",
             "        mean = F.normalize(abnormal, dim=-1).mean(1)",
             "FAPrompt: mean taken before normalisation"),
    Mutation("cap fixed temperature 0.01", "models/config.py", "    temperature: float = 0.07",
             "    temperature: float = 0.01", "FAPrompt: the fixed 0.07, not CLIP's logit scale"),
    Mutation("cap image feature with ln_post", "models/heads.py", "image = F.normalize(feats.cls_raw, dim=-1)",
             "image = F.normalize(feats.cls, dim=-1)", "FAPrompt: CLS @ proj without ln_post"),
    Mutation("deep prompts at positions 0..n-1", "models/backbone.py",
             "x = torch.cat([x[:, :1], prompt.to(x.dtype), x[:, 1 + length:]], dim=1)",
             "x = torch.cat([prompt.to(x.dtype), x[:, length:]], dim=1)", "backbone: positions 1..n after SOS"),
    Mutation("deep prompts not rounded per sequence", "models/backbone.py",
             "                        prompt = prompt.to(deep_prompt_dtype)",
             "                        prompt = prompt.to(torch.bfloat16)", "official code: rounds through fp16"),
    # -- DAP
    Mutation("dap top-k ascending", "models/cap.py",
             "return abnormal_prob.topk(k, dim=1, largest=True, sorted=True).indices",
             "return abnormal_prob.topk(k, dim=1, largest=False, sorted=True).indices",
             "FAPrompt: the k most abnormal patches"),
    Mutation("dap unnormalised patch features", "models/model.py",
             """            return F.normalize(feats.vv_proj, dim=-1)
        return F.normalize(feats.patch_proj""",
             """            return feats.vv_proj
        return F.normalize(feats.patch_proj""",
             "FAPrompt: normalised patch features"),
    Mutation("dap prior mse summed over dims", "models/model.py",
             'terms["prior"] = batch_total(out.prior.pow(2).mean(1) * (labels == 0).float(), split)',
             'terms["prior"] = batch_total(out.prior.pow(2).sum(1) * (labels == 0).float(), split)',
             "FAPrompt: MSE(beta, 0)"),
    Mutation("fused score weights swapped", "models/model.py",
             "return (2 * self.first.grid.amax(1) + self.final.grid.amax(1)) / 3",
             "return (self.first.grid.amax(1) + 2 * self.final.grid.amax(1)) / 3", "FAPrompt: (2 max a1 + max a2)/3"),
    # -- the V-V path
    Mutation("v-v attention with keys", "models/backbone.py",
             "out = F.scaled_dot_product_attention(torch.cat([q, v]), torch.cat([k, v]), torch.cat([v, v]))",
             "out = F.scaled_dot_product_attention(torch.cat([q, v]), torch.cat([k, k]), torch.cat([v, v]))",
             "backbone: queries and keys both replaced by the values"),
    Mutation("v-v start one block late", "models/backbone.py", "return max(1, round(num_layers * 5 / 24) + 1)",
             "return max(1, round(num_layers * 5 / 24) + 2)", "backbone: blocks 6..24 of 24"),
    Mutation("position grid bilinear with align_corners", "models/backbone.py",
             """            grid = F.interpolate(grid, size=(self.grid_size, self.grid_size), mode="bilinear",
                                 align_corners=False)""",
             """            grid = F.interpolate(grid, size=(self.grid_size, self.grid_size), mode="bilinear",
                                 align_corners=True)""", "official code: FAPrompt bilinear, align_corners=False"),
    # -- prompt bank
    Mutation("bank eot one position late", "models/bank.py", "eot = int(tokens[0].argmax()) + p + q - 1",
             "eot = int(tokens[0].argmax()) + p + q", "Bayes-PFL: EOT index + P + Q - 1"),
    Mutation("bank normal state gets the abnormal sample", "models/bank.py",
             "states = torch.stack([self.normal_state[None] + normal_z[:, None, None, :],",
             "states = torch.stack([self.normal_state[None] + abnormal_z[:, None, None, :],",
             "Bayes-PFL: a sample goes to the matching state"),
    Mutation("bank context sample dropped", "models/bank.py",
             "context = self.context[None, None] + context_z[:, :, None, None, :]  # [N, R, B, P, W]",
             "context = self.context[None, None] + 0 * context_z[:, :, None, None, :]  # [N, R, B, P, W]",
             "Bayes-PFL: z of the image-specific flow goes to the P context vectors"),
    # -- flows and KL
    Mutation("planar log-det without the 1", "models/flows.py",
             "log_det = log_det + torch.log(((1 - h.pow(2)) * (w_k * u_k).sum(-1) + 1).abs() + 1e-5)",
             "log_det = log_det + torch.log(((1 - h.pow(2)) * (w_k * u_k).sum(-1)).abs() + 1e-5)",
             "Bayes-PFL: log|1 + (1 - tanh^2) w.u|"),
    Mutation("planar derivative 1 - h", "models/flows.py",
             "log_det = log_det + torch.log(((1 - h.pow(2)) * (w_k * u_k).sum(-1) + 1).abs() + 1e-5)",
             "log_det = log_det + torch.log(((1 - h) * (w_k * u_k).sum(-1) + 1).abs() + 1e-5)",
             "Bayes-PFL: tanh' = 1 - tanh^2"),
    Mutation("kl q density with the encoder's lv", "models/flows.py",
             "log_q = _log_normal(z0, mean, 0.5 * log_var) + 1e-8", "log_q = _log_normal(z0, mean, log_var) + 1e-8",
             "Bayes-PFL: q(z0) = N(mu, diag exp(lv/2))"),
    Mutation("kl not divided by the batch", "models/flows.py",
             "kl = (repeat_density * (log_q - log_p).sum() - log_det.sum()) / batch_images",
             "kl = (repeat_density * (log_q - log_p).sum() - log_det.sum())", "Bayes-PFL: divided by the batch size"),
    Mutation("gaussian log-density without the half", "models/flows.py",
             "return (-0.5 * (log_var + (x - mean).pow(2) * torch.exp(-log_var))).sum(-1)",
             "return (-(log_var + (x - mean).pow(2) * torch.exp(-log_var))).sum(-1)", "Bayes-PFL: log N without 2 pi"),
    # -- RCA and the image head
    Mutation("rca without the residual", "models/heads.py",
             "return F.normalize(text + out.transpose(1, 2).reshape(n, t, e), dim=-1)",
             "return F.normalize(out.transpose(1, 2).reshape(n, t, e), dim=-1)", "Bayes-PFL: T' = normalise(T + attn)"),
    Mutation("rca dense features not normalised", "models/heads.py",
             "return F.normalize(self.proj[layer](tokens), dim=-1)", "return self.proj[layer](tokens)",
             "Bayes-PFL: F = normalise(Linear(raw tokens))"),
    Mutation("rca upsampling align_corners False", "models/model.py",
             """out.rca_diffs = [F.interpolate(d.reshape(n, m, side, side), size=(size, size), mode="bilinear",
                                           align_corners=True) for d in diffs]""",
             """out.rca_diffs = [F.interpolate(d.reshape(n, m, side, side), size=(size, size), mode="bilinear",
                                           align_corners=False) for d in diffs]""",
             "Bayes-PFL: bilinear, align_corners=True"),
    Mutation("rca pixel temperature fixed at 1/0.07", "models/heads.py",
             "logits = self.log_temperature.exp() * dense @ self.attend(text, dense).transpose(1, 2)  # [N, P, 2M]",
             "logits = (1 / 0.07) * dense @ self.attend(text, dense).transpose(1, 2)  # [N, P, 2M]",
             "Bayes-PFL: the learned tau_pix"),
    Mutation("stage-2 image feature normalised before fuse", "models/heads.py",
             "image = self.image_mapping(feats.cls + self.fuse([feats.patch_raw[layer] for layer in layers]))",
             "image = self.image_mapping(F.normalize(feats.cls, dim=-1) "
             "+ self.fuse([feats.patch_raw[layer] for layer in layers]))",
             "Bayes-PFL: image_mapping(f + fuse), f unnormalised"),
    Mutation("fuse softmax over channels", "models/heads.py", "weights = self.score(x).softmax(dim=1)",
             "weights = self.score(x).softmax(dim=-1)", "Bayes-PFL: softmax weights over the patches"),
    # -- scoring
    Mutation("bayes top-k 200 for small defects", "models/methods/bayes_pfl.py",
             "topk=2000, small_topk=20,", "topk=2000, small_topk=200,", "Bayes-PFL: k = 20 for capsules, screw, ..."),
    Mutation("bayes fusion weights 0.6 / 0.4", "models/scoring.py",
             "return 0.5 * minmax(class_prob) + 0.5 * minmax(map_score)",
             "return 0.6 * minmax(class_prob) + 0.4 * minmax(map_score)", "Bayes-PFL: 0.5 / 0.5"),
    Mutation("bayes class probability from the mean logit", "models/scoring.py",
             "return logits.softmax(dim=1)[:, 1].mean(1)", "return logits.mean(2).softmax(dim=1)[:, 1]",
             "Bayes-PFL: mean over pairs of each pair's softmax"),
    # -- dataset protocols (docs/datasets.md)
    Mutation("dra split with another seed", "datasets/raw/common.py", "test_size=0.25, random_state=42)",
             "test_size=0.25, random_state=0)", "DRA/InCTRL: train_test_split(test_size=0.25, random_state=42)"),
    Mutation("sdd bands by width", "datasets/raw/sdd.py", "        h = pixels.shape[0]\n        band",
             "        h = pixels.shape[1]\n        band", "KolektorSDD: three bands of the image's height"),
    Mutation("brainmri bayes-pfl extensions case-blind", "datasets/raw/brainmri.py",
             'lambda p: p.suffix == ".JPG"', 'lambda p: p.suffix.lower() == ".jpg"',
             "Bayes-PFL: normal '*.jpg', tumour '*.JPG', case-sensitive"),
    Mutation("dagm bayes-pfl highest clean ids", "datasets/raw/dagm.py", "clean[:len(defective)]",
             "clean[-len(defective):]", "Bayes-PFL DAGM: the defect-free images with the lowest ids"),
    # -- losses
    Mutation("bayes dice smoothing 1", "models/model.py",
             "+ dice_loss(probs[:, 1], masks, 1e-5, False,",
             "+ dice_loss(probs[:, 1], masks, 1.0, False,", "Bayes-PFL dice, smooth 1e-5"),
    Mutation("balanced focal without the background mean", "models/losses.py", "return fg_loss + bg_loss",
             "return fg_loss + 0 * bg_loss", "Bayes-PFL: mean over foreground + mean over background"),
    Mutation("bank orthogonality with |cos|", "models/losses.py",
             "cosine_sq = (unit @ unit.transpose(-1, -2)).pow(2)", "cosine_sq = (unit @ unit.transpose(-1, -2)).abs()",
             "Bayes-PFL: mean squared off-diagonal cosine"),
    Mutation("focal label smoothing off", "models/losses.py",
             "one_hot = one_hot.clamp(smooth / (classes - 1), 1.0 - smooth)", "one_hot = one_hot.clamp(0.0, 1.0)",
             "FAPrompt focal with label smoothing"),
    # -- AnomalyCLIP (the current official code)
    Mutation("similarity softmax of the mean logit", "models/heads.py", "return logits.softmax(-1).mean(1)",
             "return logits.mean(1).softmax(-1)", "FAPrompt: mean over prompts of each prompt's softmax"),
    Mutation("anomalyclip layer maps averaged", "models/methods/anomalyclip.py",
             'layer_reduce="sum", features_list=(24,)', 'layer_reduce="mean", features_list=(24,)',
             "AnomalyCLIP sums the layer maps"),
    Mutation("anomalyclip map loss weight 1", "models/methods/anomalyclip.py", "map_loss_weight=4.0, sigma=4.0))",
             "map_loss_weight=1.0, sigma=4.0))", "AnomalyCLIP since April 2025: lambda = 4"),
    Mutation("anomalyclip layers aliased to the last v-v layer", "models/model.py", "        if cfg.vv_aliased:",
             "        if not cfg.vv_aliased:", "the current code clones each listed layer's tokens"),
    # -- registry entries (pinned to the official code by tests/test_registry.py)
    Mutation("bayes recipe batch 16", "models/methods/bayes_pfl.py", "recipe=Recipe(epochs=30, batch_size=32,",
             "recipe=Recipe(epochs=30, batch_size=16,", "Bayes-PFL: batch 32 (its train.sh)"),
    Mutation("mosaic with visa as auxiliary set", "models/methods/bayes_pfl.py", 'MOSAIC_PROB = frozen({"mvtec": 0.4})',
             'MOSAIC_PROB = frozen({"visa": 0.4})', "Bayes-PFL: mosaics only when MVTec-AD is the auxiliary set"),
    Mutation("anomalyclip n_ctx sets one context", "models/methods/anomalyclip.py",
             '    fields.setdefault("abnormal_ctx", value)\n', "",
             "AnomalyCLIP: --n_ctx is both context lengths"),
    # -- metrics and smoothing
    Mutation("aupro 4-connected regions", "utils/metrics.py", "mask.astype(np.uint8), connectivity=8,",
             "mask.astype(np.uint8), connectivity=4,", "metrics: 8-connectivity"),
    Mutation("aupro integration limit 0.35", "utils/metrics.py", "MAX_FPR = 0.3", "MAX_FPR = 0.35",
             "metrics: FPR in [0, 0.3]"),
    Mutation("gaussian truncate 3", "utils/filters.py",
             "maps: torch.Tensor | np.ndarray, sigma: float, truncate: float = 4.0",
             "maps: torch.Tensor | np.ndarray, sigma: float, truncate: float = 3.0",
             "FAPrompt and Bayes-PFL blur: truncate 4"),
    # -- WinCLIP (docs/methods/winclip.md)
    Mutation("winclip window rows strided by the window size", "models/winclip.py",
             "offsets = (torch.arange(size)[:, None] * grid + torch.arange(size)[None, :]).flatten()",
             "offsets = (torch.arange(size)[:, None] * size + torch.arange(size)[None, :]).flatten()",
             "WinCLIP: a window is s x s neighbouring patches of the grid"),
    Mutation("winclip arithmetic mean over windows", "models/winclip.py",
             "return (cover.sum(1) / inverse).nan_to_num(nan=0.0, posinf=0.0)",
             "return torch.where(cover, scores[:, None, :], 0).sum(-1) / cover.sum(1)",
             "WinCLIP: harmonic mean of the windows covering a patch"),
    Mutation("winclip arithmetic mean over scales", "models/winclip.py",
             "grid = stacked.shape[0] / (1 / stacked).sum(0)", "grid = stacked.mean(0)",
             "WinCLIP: harmonic mean over the scales and the image score"),
    Mutation("winclip scales 2 and 4", "models/winclip.py", "scales: Tuple[int, ...] = (2, 3)",
             "scales: Tuple[int, ...] = (2, 4)", "WinCLIP: windows of 2 and 3 patches"),
    Mutation("winclip ensemble of normalised prompts", "models/ensemble.py",
             "pair.append(feats.mean(0))", "pair.append(F.normalize(feats, dim=-1).mean(0))",
             "WinCLIP (anomalib): the mean of the prompts' unnormalised features"),
    # -- APRIL-GAN (docs/methods/april_gan.md)
    Mutation("april_gan linear maps on blocks 6 12 18 23", "models/april_gan.py",
             "features_list: Tuple[int, ...] = (6, 12, 18, 24)", "features_list: Tuple[int, ...] = (6, 12, 18, 23)",
             "APRIL-GAN: the outputs of 1-based blocks 6, 12, 18, 24"),
    Mutation("april_gan upsampling align_corners False", "models/april_gan.py",
             "out.append(F.interpolate(logits.reshape(-1, 2, side, side), size=(size, size), mode=\"bilinear\",\n"
             "                                     align_corners=True))",
             "out.append(F.interpolate(logits.reshape(-1, 2, side, side), size=(size, size), mode=\"bilinear\",\n"
             "                                     align_corners=False))",
             "APRIL-GAN: bilinear with align_corners=True"),
    Mutation("april_gan layers averaged", "models/april_gan.py",
             "maps = sum(logits.softmax(1)[:, 1] for logits in self.layer_logits(feats, pairs))",
             "maps = sum(logits.softmax(1)[:, 1] for logits in self.layer_logits(feats, pairs)) / len(self.linear)",
             "APRIL-GAN: the layers' maps are summed"),
    Mutation("april_gan tokens through ln_post", "models/april_gan.py",
             "tokens = F.normalize(linear(feats.patch_raw[layer].float()), dim=-1)",
             "tokens = F.normalize(linear(self.backbone.clip.visual.ln_post(feats.patch_raw[layer].float())), dim=-1)",
             "APRIL-GAN: raw block outputs, no ln_post"),
    Mutation("april_gan few-shot layers averaged", "engine/fewshot.py",
             "            return FewShotOutput(maps, grids.sum(0).amax(1))",
             "            return FewShotOutput(maps / len(entries), grids.sum(0).amax(1))",
             "APRIL-GAN few-shot: the layers' distance maps are summed"),
    # -- VCP-CLIP (docs/methods/vcp_clip.md)
    Mutation("vcp_clip Post-VCP attention scaled by 1/sqrt(d)", "models/vcp_clip.py",
             "out = F.scaled_dot_product_attention(q, k, v, scale=1.0)",
             "out = F.scaled_dot_product_attention(q, k, v)",
             "VCP-CLIP: Post-VCP attention without the 1/sqrt(d) scale"),
    Mutation("vcp_clip no prompt_norm before ln_final", "models/vcp_clip.py",
             "eot, final_norm = eot + prompt_len, self.text_prompts.norm",
             "eot, final_norm = eot + prompt_len, None", "VCP-CLIP: prompt_norm, then ln_final, on the EOT token"),
    Mutation("vcp_clip pooled before the class tokens' shift", "models/vcp_clip.py",
             "eot = eots.repeat_interleave(n) + r - 1", "eot = eots.repeat_interleave(n)",
             "VCP-CLIP: the r class tokens replace one placeholder, so the EOT moves by r - 1"),
    Mutation("vcp_clip map weights swapped", "models/vcp_clip.py",
             "map_weight: float = 0.2", "map_weight: float = 0.8",
             "VCP-CLIP: 0.2 linear branch + 0.8 Post-VCP"),
    Mutation("vcp_clip Pre-VCP without the global feature", "models/vcp_clip.py",
             "return query + self.conv(image_feature[:, None]) if self.use_global else query",
             "return query", "VCP-CLIP: class tokens = query + conv1d(global image feature)"),
    # -- AdaCLIP (docs/methods/adaclip.md)
    Mutation("adaclip text prompts from block 1", "models/adaclip.py",
             "per_block = self.text_prompts(plain_cls.float())[1:]  # block 1 sees the plain sentence",
             "per_block = self.text_prompts(plain_cls.float())[:-1]",
             "AdaCLIP: text blocks 2..J get the prompt tokens of positions 2..J"),
    Mutation("adaclip visual prompts not rounded through fp16", "models/adaclip.py",
             "feats = self.backbone.encode_image_prompted(images, layers, self.visual_prompts(plain.float()), dtype)",
             "feats = self.backbone.encode_image_prompted(images, layers, self.visual_prompts(plain.float()))",
             "AdaCLIP: prompts rounded through float16 (.half())"),
    Mutation("adaclip HSF weight 0.5", "models/adaclip.py",
             "image = F.normalize(0.2 * self.hybrid_fusion(tokens, logits) + 0.8 * cls, dim=1)",
             "image = F.normalize(0.5 * self.hybrid_fusion(tokens, logits) + 0.5 * cls, dim=1)",
             "AdaCLIP: 0.2 clustered + 0.8 global feature"),
    Mutation("adaclip test map: softmax per block, then the mean", "models/adaclip.py",
             "mean = torch.stack([self._upsample(x) for x in logits]).mean(0).softmax(1)",
             "mean = torch.stack([self._upsample(x).softmax(1) for x in logits]).mean(0)",
             "AdaCLIP at test time: the blocks' logits averaged, then one softmax"),
    Mutation("adaclip dice per image", "models/adaclip.py",
             "rows = self.config.row_dice and masks.shape[0] == 1  # [H, W]: each row a sample",
             "rows = False", "official AdaCLIP: a batch of one image gets row-wise dice"),
]


def tracked_files() -> List[str]:
    """Files of the checkout: tracked plus untracked-not-ignored, as they are in the work tree."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def run(mutation: Mutation, files: List[str], timeout: int) -> tuple:
    """("caught" | "SURVIVED" | "stale" | "timeout", first failing test or reason, seconds)."""
    source = (ROOT / mutation.path).read_text()
    if source.count(mutation.old) != 1:
        return "stale", f"the code to mutate occurs {source.count(mutation.old)} times in {mutation.path}", 0.0
    with tempfile.TemporaryDirectory(prefix="mutation_") as tmp:
        copy = Path(tmp) / "repo"
        for name in files:
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
        (copy / mutation.path).write_text(source.replace(mutation.old, mutation.new))
        start = time.time()
        pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
        for phase in PHASES:  # the fixture comparisons first: most misreadings stop there, quickly
            try:
                result = subprocess.run(pytest + phase, cwd=copy, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return "timeout", f"a suite run took over {timeout} s (raise --timeout)", time.time() - start
            if result.returncode != 0:
                failed = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
                detail = failed[0].split(" - ")[0] if failed else result.stdout.strip().splitlines()[-1]
                return "caught", detail, time.time() - start
        return "SURVIVED", "", time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per suite run")
    args = parser.parse_args()
    from tabulate import tabulate

    chosen = [m for m in MUTATIONS if args.k.lower() in m.name.lower()]
    if args.list:
        print(tabulate([(m.name, m.path, m.spec) for m in chosen], headers=["mutation", "file", "the docs say"]))
        return 0
    files = tracked_files()
    rows = []
    for index, mutation in enumerate(chosen, start=1):
        status, detail, seconds = run(mutation, files, args.timeout)
        rows.append((mutation.name, mutation.path, status, detail, f"{seconds:.0f}"))
        print(f"[{index}/{len(chosen)}] {status:8s} {mutation.name}: {detail}", flush=True)
    print(tabulate(rows, headers=["mutation", "file", "result", "first failing test", "s"], tablefmt="github"))
    bad = [r for r in rows if r[2] != "caught"]
    print(f"{len(rows) - len(bad)} of {len(rows)} mutations caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
