"""Part ``distributed`` of benchmarks/device_check.py: the test of a random-weight Bayes-PFL
checkpoint on a synthetic set by ``python test.py`` and by ``torchrun --nproc_per_node N
test.py``: wall times, the speed-up, and whether the results agree."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from benchmarks import common
from benchmarks.checks.base import Recorder, section


def _script(model_name: str, configs: Path, script: str) -> List[str]:
    """The script's command line (through tests/tiny_cli.py, which registers the tiny model)."""
    root = common.ROOT
    if model_name == common.TINY_MODEL:
        return [str(root / "tests" / "tiny_cli.py"), str(configs), str(root / script)]
    return [str(root / script)]


def _timed_run(command: List[str], cwd: Path, cpu: bool = False) -> Dict[str, object]:
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    if cpu:  # torchrun gives each process one thread; the run it is compared with gets the same
        env["OMP_NUM_THREADS"] = "1"  # (a CPU reduction's rounding depends on its thread count)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    out = {"command": " ".join(command), "seconds": time.perf_counter() - start, "returncode": done.returncode}
    if done.returncode:
        out["output_tail"] = (done.stdout + done.stderr)[-3000:]
    return out


def part_distributed(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                     image_size: int) -> None:
    """One process against torchrun on N: the same results, and how much faster."""
    import json
    import tempfile

    import numpy as np

    from datasets.synthetic import generate
    from models.backbone import BackboneConfig
    from models.factory import save_checkpoint

    processes = args.processes or (torch.cuda.device_count() if device.type == "cuda" else 1)
    section(f"distributed: python test.py against torchrun --nproc_per_node {processes} test.py")
    if processes < 2:
        rec.data["distributed"] = {"skipped": f"{processes} GPU visible; pass --processes N to force"}
        print(rec.data["distributed"]["skipped"], flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="zsad_dist_") as tmp:
        folder = Path(tmp)
        data = generate(folder / "data", size=256, n_train=0, n_test_good=args.distributed_images, n_test_defect=2)
        backbone = common.make_backbone(model_name, args.pretrained, image_size, device, "auto",
                                        pos_interpolation="bicubic", seed=args.seed)
        model = common.build_method("bayes_pfl", backbone, device, args.seed)
        checkpoint = folder / "bayes_pfl" / "final.pth"
        save_checkpoint(checkpoint, model, BackboneConfig(model=model_name, pretrained=args.pretrained,
                                                          image_size=image_size, pos_interpolation="bicubic"))
        flags = ["--checkpoint_path", str(checkpoint), "--data_path", str(data), "--save_maps", "--no_report",
                 "--device", "cuda" if device.type == "cuda" else "cpu"]
        script = _script(model_name, folder / "configs", "test.py")
        cpu = device.type != "cuda"
        single = _timed_run([sys.executable, *script, *flags, "--save_path", str(folder / "single")], folder, cpu)
        multi = _timed_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                            str(processes), *script, *flags, "--save_path", str(folder / "multi")], folder, cpu)
        out: Dict[str, object] = {"processes": processes, "images": sum(1 for _ in (data).rglob("test/*/*.png")),
                                  "single": single, "torchrun": multi}
        if single["returncode"] == 0 and multi["returncode"] == 0:
            a = json.loads((folder / "single" / "results.json").read_text())
            b = json.loads((folder / "multi" / "results.json").read_text())
            worst = 0.0
            for path in (folder / "single" / "maps").rglob("*.npy"):
                other = folder / "multi" / "maps" / path.relative_to(folder / "single" / "maps")
                worst = max(worst, float(np.abs(np.load(path) - np.load(other)).max()))
            out.update({"metrics_equal": a["per_category"] == b["per_category"], "max_map_difference": worst,
                        "speedup": single["seconds"] / multi["seconds"]})
        rec.data["distributed"] = out
        print(f"{processes} processes: {multi['seconds']:.1f} s against {single['seconds']:.1f} s for one "
              f"(whole runs, start-up included); metrics equal: {out.get('metrics_equal')}, "
              f"max map difference {out.get('max_map_difference', float('nan')):.1e}", flush=True)
        for name in ("single", "torchrun"):
            if out[name]["returncode"]:
                print(f"!! {name} failed:\n{out[name]['output_tail']}", flush=True)

