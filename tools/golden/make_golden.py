"""Regenerate the golden fixtures in tests/golden/ from checkouts of the official code.

    python tools/golden/make_golden.py --faprompt /path/to/FAPrompt --bayes_pfl /path/to/Bayes-PFL \
        --anomalyclip /path/to/AnomalyCLIP

Steps: rebuild the tiny CLIP and the golden images; run the official FAPrompt, Bayes-PFL and
AnomalyCLIP test and one training step on them, each in its own process (harness_*.py, importing the
official code at run time; nothing of it is copied here), recording every stage; write the
recorded arrays, the official modules' key/shape manifests (tiny and ViT-L-14-336 size) and
the provenance; then freeze our own defaults (``--compat ours``) on the same inputs with the
code of this checkout. The official checkouts need pandas (Bayes-PFL's results table) and the
project's requirements; see tests/golden/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.golden import golden_clip, golden_data  # noqa: E402
from tools.golden.golden_checkpoints import ANOMALYCLIP_SEED, BAYES_PFL_SEED, FAPROMPT_SEED  # noqa: E402

OUT = ROOT / "tests" / "golden"
# Our own defaults, frozen: the arrays kept (a subset, to keep the fixtures small).
OURS_KEYS = {
    "faprompt": ("grid1", "grid2", "dap/selected", "dap/prior", "text/dap", "class_prob", "image_score",
                 "map_blurred"),
    "bayes_pfl": ("flow/context", "flow/normal", "flow/abnormal", "text", "image_logits", "class_prob",
                  "anomaly_map", "map_score", "image_score"),
    "anomalyclip": ("grid/4", "grid/24", "map_blurred", "image_score"),
}


def commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def run_harness(script: str, *arguments: str) -> None:
    command = [sys.executable, str(HERE / script), *arguments]
    print("running", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def split(npz: Path, method: str, provenance: dict) -> None:
    """Official arrays → tests/golden/<method>_official.npz, manifests → JSON files."""
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    for size in ("tiny", "full"):
        entries = json.loads(str(arrays.pop(f"{size}_manifest")))
        (OUT / f"{method}_{size}_manifest.json").write_text(json.dumps(entries, indent=1) + "\n")
    provenance[f"{method}_checkpoint_checksum"] = float(arrays.pop("checkpoint_checksum"))
    if method == "bayes_pfl":  # R of the official test run: its noise is [N, 3R, D]
        provenance["bayes_pfl_sample_num"] = int(arrays["noise"].shape[1] // 3)
    if method == "anomalyclip":  # the layers of the official test run
        provenance["anomalyclip_features_list"] = sorted(int(k.rsplit("/", 1)[1]) for k in arrays
                                                         if k.startswith("grid/"))
    np.savez_compressed(OUT / f"{method}_official.npz", **arrays)


def freeze_ours(work: Path) -> None:
    """Our outputs with ``--compat ours`` on the golden inputs (no official path exists for them)."""
    import torch

    from tools.golden import stages

    torch.set_num_threads(2)
    golden = stages.prepare(work)
    for method in ("faprompt", "bayes_pfl", "anomalyclip"):
        reference = stages.fixture(f"{method}_official")
        model = stages.build(golden, method, "ours")
        if method == "faprompt":
            values = stages.faprompt_stages(model, golden)
            train = stages.train_step(model, golden, reference["train/order"], reference)
        elif method == "anomalyclip":
            values = stages.anomalyclip_stages(model, golden)
            train = stages.train_step(model, golden, reference["train/order"], reference)
        else:
            values = stages.bayes_pfl_stages(model, golden, None)
            train = stages.bayes_pfl_train(model, golden, reference["train/order"], 333, reference)
        kept = {k: values[k] for k in OURS_KEYS[method]}
        kept.update(train)
        np.savez_compressed(OUT / f"{method}_ours.npz", **kept)
        print(f"froze {len(kept)} arrays of our {method} defaults")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faprompt", type=Path, help="checkout of mala-lab/FAPrompt")
    parser.add_argument("--bayes_pfl", type=Path, help="checkout of xiaozhen228/Bayes-PFL")
    parser.add_argument("--anomalyclip", type=Path, help="checkout of zqhang/AnomalyCLIP")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--ours_only", action="store_true",
                        help="keep the official fixtures; only freeze our defaults again (after a deliberate "
                             "change of them)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="golden_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.ours_only:
        freeze_ours(work / "ours")
        return
    if args.faprompt is None or args.bayes_pfl is None or args.anomalyclip is None:
        parser.error("--faprompt, --bayes_pfl and --anomalyclip are required (or --ours_only)")
    OUT.mkdir(parents=True, exist_ok=True)

    clip = work / "clip.pt"
    provenance = {
        "generated": datetime.date.today().isoformat(),
        "command": "python tools/golden/make_golden.py --faprompt PATH --bayes_pfl PATH --anomalyclip PATH",
        "faprompt_commit": commit(args.faprompt), "bayes_pfl_commit": commit(args.bayes_pfl),
        "anomalyclip_commit": commit(args.anomalyclip), "anomalyclip_checkpoint_seed": ANOMALYCLIP_SEED,
        "clip_seed": golden_clip.SEED, "clip_checksum": golden_clip.write_golden_clip(clip),
        "data_seed": golden_data.DATA_SEED, "faprompt_checkpoint_seed": FAPROMPT_SEED,
        "bayes_pfl_checkpoint_seed": BAYES_PFL_SEED,
    }
    data = golden_data.golden_images()
    golden_data.write_dataset(work / "data", data)
    np.savez_compressed(OUT / "data.npz", **data)
    config = work / "config.json"
    config.write_text(json.dumps(golden_clip.OPEN_CLIP_CONFIG))

    common = ["--work", str(work), "--clip", str(clip), "--data", str(work / "data"),
              "--image_size", str(golden_clip.IMAGE_SIZE)]
    run_harness("harness_faprompt.py", "--official", str(args.faprompt), *common, "--out", str(work / "faprompt.npz"))
    run_harness("harness_bayes_pfl.py", "--official", str(args.bayes_pfl), *common, "--config", str(config),
                "--out", str(work / "bayes_pfl.npz"))
    run_harness("harness_anomalyclip.py", "--official", str(args.anomalyclip), *common,
                "--out", str(work / "anomalyclip.npz"))
    for method in ("faprompt", "bayes_pfl", "anomalyclip"):
        split(work / f"{method}.npz", method, provenance)
    import torch

    provenance.update(torch=torch.__version__, numpy=np.__version__)
    (OUT / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    freeze_ours(work / "ours")
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(f"fixtures in {OUT}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
