"""CPU deployment: the whole test job on each runtime and precision, against eager PyTorch fp32.

Run from anywhere: ``python benchmarks/deploy.py --model tiny`` (seconds) or, at full size on
real images, ``python benchmarks/deploy.py --data_path data/mvtec --classes transistor --images 16``
(ViT-L-14-336 at 518 px, random weights unless ``--pretrained`` names a file). One model of
``--method`` (random prompt weights, seeded) is exported once (``engine.export``), and the same
images go through the test job as test.py runs it (``engine.testing.run_test``: loading, model,
blur, metrics, results files) on each row:

    eager fp32        the PyTorch model, the reference;
    eager bf16        the same with the backbone under CPU bfloat16 autocast (``--precision bf16``);
    onnxruntime fp32  the exported ONNX graph;
    openvino fp32     the exported OpenVINO IR;
    openvino bf16     the same compiled with the bfloat16 inference-precision hint.

Per row: seconds per image of the job and of its model part, the speed-up over eager fp32, the
largest map difference from eager fp32 (absolute, and relative to the reference maps' range)
and the largest difference of any mean metric in points. Rows run one after another in this
process at batch 1 (an exported graph takes one image), each after one untimed image.
``--tower`` adds the image tower alone (``encode_images`` exported by itself) on each row.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.run import StageClock, make_dataset  # noqa: E402

ROWS = ("eager_fp32", "eager_bf16", "onnxruntime_fp32", "openvino_fp32", "openvino_bf16")
METHODS = ("faprompt", "anomalyclip", "bayes_pfl", "fapfl", "clip")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, iters=1, warmup=1)
    parser.add_argument("--method", choices=METHODS, default="faprompt")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--images", type=int, default=None, help="test images (default 12; 4 at full size)")
    parser.add_argument("--data_path", default=None, help="a real dataset root (meta.json) instead of synthetic images")
    parser.add_argument("--classes", nargs="+", default=None, help="categories of --data_path")
    parser.add_argument("--source_size", type=int, default=None, help="synthetic image size (default 1024; 64 tiny)")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers of the job")
    parser.add_argument("--sample_num", type=int, default=10, help="flow samples R (Bayes-PFL, fapfl)")
    parser.add_argument("--keep", default=None, help="write the export here (kept) instead of a temporary folder")
    parser.add_argument("--tower", action="store_true",
                        help="also time the image tower alone (encode_images) on each row, on one random image")
    return parser


class Tower(torch.nn.Module):
    """The method's image-tower pass (``encode_images``) as a module with tensor outputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        feats = self.model.encode_images(image)
        return tuple(t for t in (feats.cls, feats.cls_raw, feats.vv_proj, *feats.patch_raw.values(),
                                 *(feats.vv_layers or {}).values()) if t is not None and t.numel())


def tower_rows(args, settings, model, folder: Path) -> Dict[str, Dict[str, float]]:
    """Seconds of one image through the image tower alone on each row (best of ``--iters``, after
    one untimed call), and the largest output difference from eager fp32."""
    from engine.export import import_runtime, tracing

    image = common.random_images(1, settings["image_size"], "cpu", seed=args.seed)
    path = folder / "tower.onnx"
    tower = Tower(model).eval()
    with tracing(model), torch.no_grad():
        torch.onnx.export(tower, (image,), str(path), input_names=["image"], opset_version=17, dynamo=False)
        reference = tower(image)
    ov, ort = import_runtime("openvino"), import_runtime("onnxruntime")
    threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ir = ov.convert_model(str(path))

    def openvino(hint):
        compiled = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                                       "INFERENCE_NUM_THREADS": threads})
        return lambda: [np.asarray(v) for v in compiled(image.numpy()).values()]

    def eager(precision):
        def run():
            saved = model.backbone.precision
            model.backbone.precision = precision
            try:
                with torch.no_grad():
                    return [t.numpy() for t in tower(image)]
            finally:
                model.backbone.precision = saved
        return run

    makers = {"eager_fp32": lambda: eager("fp32"), "eager_bf16": lambda: eager("bf16"),
              "onnxruntime_fp32": lambda: (lambda: session.run(None, {"image": image.numpy()})),
              "openvino_fp32": lambda: openvino("f32"), "openvino_bf16": lambda: openvino("bf16")}
    out = {}
    for row in args.rows:
        run = makers[row]()
        run()
        times = []
        for _ in range(max(2, args.iters)):
            start = time.perf_counter()
            got = run()
            times.append(time.perf_counter() - start)
        diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, reference))
        out[row] = {"s": min(times), "diff": diff}
        print(f"tower {row}: {min(times):.2f} s", flush=True)
    return out


def job(model, dataset, folder: Path, sigma: float, workers: int):
    """run_test at batch 1 with maps saved: (seconds, model seconds, mean metrics, maps by file)."""
    from engine.testing import run_test

    device = torch.device("cpu")
    clock = StageClock(device)
    start = time.perf_counter()
    with torch.no_grad():
        _, mean = run_test(model, dataset, device, 1, workers, sigma, ("image", "pixel"), folder,
                           {"benchmark": "deploy"}, save_maps_flag=True, timer=clock)
    seconds = time.perf_counter() - start
    maps = {p.relative_to(folder).as_posix(): np.load(p) for p in sorted((folder / "maps").rglob("*.npy"))}
    return seconds, clock.spent["model"], mean, maps


def warm(model, dataset) -> None:
    """One untimed image: compilation, first-call allocations."""
    item = dataset[0]
    with torch.no_grad():
        model.start_evaluation()
        model.predict(item["image"][None], [item["cls_name"]])


def runner(row: str, args, settings, model, export_dir: Path):
    """The model of a row: the eager one, its bf16-autocast twin (same seed, same weights) or
    the export on a runtime."""
    from engine.runtimes import ExportedModel

    if row == "eager_fp32":
        return model
    if row == "eager_bf16":
        backbone = common.make_backbone(settings["model"], args.pretrained, settings["image_size"], "cpu", "bf16",
                                        pos_interpolation=model.backbone.pos_interpolation, seed=args.seed)
        return common.build_method(args.method, backbone, "cpu", args.seed, **sizes(args))
    runtime, precision = row.split("_")
    return ExportedModel(export_dir, runtime, precision, model.config)


def sizes(args) -> Dict[str, object]:
    return {"sample_num": args.sample_num} if args.method in ("bayes_pfl", "fapfl") else {}


def run(args: argparse.Namespace) -> Dict[str, object]:
    from engine.export import export_model

    settings = common.setup(args)
    if settings["device"].type != "cpu":
        raise SystemExit("benchmarks/deploy.py measures CPU runtimes: pass --device cpu")
    result: Dict[str, object] = {"benchmark": "deploy", "method": args.method,
                                 "settings": {**settings, "pretrained": args.pretrained},
                                 "environment": common.environment(settings["device"]), "rows": {}}
    backbone = common.make_backbone(settings["model"], args.pretrained, settings["image_size"], "cpu", "fp32",
                                    pos_interpolation=common.pos_interpolation(args.method),
                                    seed=args.seed)
    model = common.build_method(args.method, backbone, "cpu", args.seed, **sizes(args))
    with tempfile.TemporaryDirectory(prefix="zsad_deploy_") as tmp:
        folder = Path(tmp)
        dataset = make_dataset(args, settings["image_size"], folder, settings["model"] == common.TINY_MODEL)
        export_dir = Path(args.keep) if args.keep else folder / "exported"
        start = time.perf_counter()
        with torch.no_grad():
            export_model(model, export_dir, ["onnx", "openvino"], sorted(set(dataset.classes)),
                         {"method": args.method, "config": {}, "backbone": {}})
        result["export_s"] = time.perf_counter() - start
        result["images"] = len(dataset)
        if args.tower:
            result["tower"] = tower_rows(args, settings, model, folder)
        reference = None
        for row in args.rows:  # one runtime at a time: each is released before the next loads
            tested = runner(row, args, settings, model, export_dir)
            warm(tested, dataset)
            seconds, model_s, mean, maps = job(tested, dataset, folder / row, model.config.sigma, args.num_workers)
            entry = {"s": seconds, "model_s": model_s, "mean": mean}
            if reference is None:
                reference = entry, maps
            entry.update(compare(reference, entry, maps))
            result["rows"][row] = entry
            print(f"{row}: {seconds / len(dataset):.2f} s/image", flush=True)
            del tested
    result["environment"]["load_average_end"] = common.load_average()
    return result


def compare(reference, entry, maps) -> Dict[str, object]:
    """Largest map difference (absolute and relative to the reference maps' range) and the
    largest difference of a mean metric, in points, from the reference row."""
    ref_entry, ref_maps = reference
    low = min(float(m.min()) for m in ref_maps.values())
    high = max(float(m.max()) for m in ref_maps.values())
    diff = max(float(np.abs(maps[k] - ref_maps[k]).max()) for k in ref_maps)
    metric = {k: 100 * abs(entry["mean"][k] - v) for k, v in ref_entry["mean"].items()
              if v is not None and entry["mean"].get(k) is not None}
    return {"map_diff": diff, "map_diff_rel": diff / max(high - low, 1e-12), "metric_diff_points": metric,
            "speedup": ref_entry["s"] / entry["s"], "model_speedup": ref_entry["model_s"] / entry["model_s"]}


def report(result: Dict[str, object]) -> str:
    s, env = result["settings"], result["environment"]
    n = result["images"]
    head = (f"CPU test job on each runtime: {result['method']}, {s['model']} ({s['pretrained']} weights), "
            f"{s['image_size']} px, {n} images, batch 1, {env.get('cpu_threads')} threads; export "
            f"{result['export_s']:.0f} s" + (f"; load average {' '.join(env['load_average'])} at the start, "
                                             f"{' '.join(env['load_average_end'])} at the end"
                                             if env.get("load_average") else ""))
    rows: List[Sequence[object]] = []
    for row, e in result["rows"].items():
        worst = max(e["metric_diff_points"].items(), key=lambda kv: kv[1], default=("-", 0.0))
        rows.append([row, e["s"] / n, e["model_s"] / n, f"{e['speedup']:.2f}x", f"{e['model_speedup']:.2f}x",
                     f"{e['map_diff']:.2e}", f"{100 * e['map_diff_rel']:.3f} %", f"{worst[1]:.3f} ({worst[0]})"])
    table = common.format_table(rows, ["row", "job s/image", "model s/image", "job speed-up", "model speed-up",
                                       "max map diff", "of map range", "max metric diff, points"])
    lines = [head, table, "(speed-ups and differences against eager_fp32, the first row)"]
    tower = result.get("tower")
    if tower:
        base = tower.get("eager_fp32", {}).get("s")
        lines.append(common.format_table(
            [[row, e["s"], f"{base / e['s']:.2f}x" if base else "-", f"{e['diff']:.2e}"] for row, e in tower.items()],
            ["image tower alone", "s/image", "speed-up", "max output diff"]))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    return common.run_main(build_parser, run, report, argv)


if __name__ == "__main__":
    main()
