"""The paper table: published figures (tools/published_results.csv), our figures beside them, and
PRESET=paper of test.sh on the miniature demo of several prepared datasets."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from datasets import raw
from datasets.paper_demo import DEMO, generate
from models import methods as registered
from tools.paper_table import COLUMNS, METRICS, PAPERS, PUBLISHED, load_published, write_table

ROOT = Path(__file__).resolve().parents[1]


def test_published_figures_are_well_formed_and_sourced():
    with open(PUBLISHED, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert len(rows) >= 30
    methods = set(registered.names())
    for row in rows:
        assert row["method"] in methods and row["dataset"] in raw.names(), row
        assert row["source"] and row["table"] and row["provenance"] in ("paper", "quoted"), row
        if registered.get(row["method"]).trainable:  # trained on the other of MVTec AD and VisA
            trained = row["trained_on"].split("+")  # AdaCLIP: with a medical set (mvtec+colondb)
            assert trained[0] in ("mvtec", "visa") and row["dataset"] not in trained, row
            if len(trained) == 1 or row["dataset"] in ("mvtec", "visa"):
                assert (trained[0] == "visa") == (row["dataset"] == "mvtec"), row
        else:
            assert row["trained_on"] == "none", row
        values = [row[m] for m, _, _ in METRICS if row[m].strip()]
        assert values and all(0 < float(v) <= 100 for v in values), row
    table, sources = load_published()
    assert {"faprompt", "anomalyclip", "winclip"} <= set(sources) <= methods
    assert table[("winclip", "mvtec")]["pixel_auroc"] == 85.1 and table[("winclip", "isic")]["image_auroc"] is None
    assert table[("anomalyclip", "mvtec")]["image_auroc"] == 91.5 and not table[("anomalyclip", "mvtec")]["quoted"]


def cells(markdown: str) -> dict:
    """``{(dataset, metric): [ours, FAPrompt, Bayes-PFL, AnomalyCLIP, difference]}`` of a table."""
    out = {}
    for line in markdown.splitlines():
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(parts) == 7 and parts[0] not in ("dataset", "") and "---" not in line:
            out[(parts[0], parts[1])] = parts[2:]
    return out


def _results(folder: Path, method: str, mean: dict, trained_on=None) -> None:
    folder.mkdir(parents=True)
    keys = [key for _, _, key in METRICS]
    training = {"dataset": trained_on} if trained_on else None
    (folder / "results.json").write_text(json.dumps({"method": method, "metrics": keys, "mean": mean,
                                                     "training": training}))


def test_table_puts_ours_beside_the_published_and_says_what_is_missing(tmp_path):
    published = tmp_path / "published.csv"
    published.write_text(",".join(COLUMNS) + "\n"
                         "faprompt,mvtec,visa,91.0,96.0,90.0,81.0,paper,paper,Table 1,\n"
                         "anomalyclip,mvtec,visa,91.5,96.2,91.1,81.4,quoted,a README,its table,\n"
                         "faprompt,headct,mvtec,90.0,89.0,,,paper,paper,Table 2,\n"
                         "faprompt,btad,mvtec,90.0,89.0,,,paper,paper,Table 2,\n"
                         "winclip,dtd,none,93.2,92.6,83.9,57.8,paper,a table image,its column,\n")
    _results(tmp_path / "res" / "mvtec", "faprompt", {"image_auroc": 0.925, "image_ap": 0.95,
                                                      "pixel_auroc": 0.9, "pixel_pro_legacy": 0.8})
    _results(tmp_path / "res" / "headct", "faprompt", {"image_auroc": 0.88, "image_ap": 0.9,
                                                       "pixel_auroc": None, "pixel_pro_legacy": None})
    _results(tmp_path / "res" / "btad", "faprompt", {"image_auroc": 0.95, "image_ap": 0.9, "pixel_auroc": 0.9,
                                                     "pixel_pro_legacy": 0.7}, trained_on="visa")
    _results(tmp_path / "res" / "dtd", "winclip", {"image_auroc": 0.9, "image_ap": 0.9, "pixel_auroc": 0.85,
                                                    "pixel_pro_legacy": 0.5})  # training-free: no training set
    (tmp_path / "data" / "visa").mkdir(parents=True)
    (tmp_path / "data" / "visa" / "meta.json").write_text("{}")  # prepared, but its run left no results
    text = write_table(tmp_path / "res", tmp_path / "data", published)
    table = cells(text)
    assert table[("mvtec", "I-AUROC")] == ["92.5", "91.0", "–", "91.5*", "+1.5"]
    assert table[("headct", "P-AUROC")] == ["n/a", "–", "–", "–", ""]
    assert table[("headct", "I-AUROC")] == ["88.0", "90.0", "–", "–", "-2.0"]
    assert table[("btad", "I-AUROC")][-1] == "n/c (trained on visa, paper on mvtec)"
    assert table[("dtd", "P-AUROC")] == ["85.0", "–", "–", "–", "+1.1"]  # WinCLIP's own figure, no column
    assert "- winclip (the difference column): a table image its column" in text
    failed = text.split("Not found (no results although prepared): ")[1].splitlines()[0]
    unprepared = text.split("Not found (no <name>/meta.json under")[1].splitlines()[0]
    assert failed == "visa" and "mpdd" in unprepared and "visa" not in unprepared and "mvtec" not in unprepared
    with open(tmp_path / "res" / "paper_table.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) == 1 + 4 * 4


def test_paper_preset_runs_on_the_demo_and_shows_the_published_columns(tiny_model, tmp_path):
    demo = tmp_path / "demo"
    generate(demo)
    python = tmp_path / "python"  # test.py must see the tiny model; everything else runs plainly
    python.write_text(f'#!/bin/sh\nif [ "$1" = test.py ]; then exec "{sys.executable}" "{ROOT}/tests/tiny_cli.py" '
                      f'"{tmp_path}/configs" "$@"; fi\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "PRESET": "paper", "METHOD": "clip", "DATA_ROOT": str(demo),
           "SAVE_ROOT": str(tmp_path / "results")}
    done = subprocess.run(["bash", str(ROOT / "test.sh"), "--model", tiny_model, "--pretrained", "none",
                           "--image_size", "32", "--num_workers", "0"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "results" / "paper_clip" / "paper_table.md").read_text()
    for _, name in PAPERS:
        assert name in table
    published, _ = load_published()
    rows = cells(table)
    for name in DEMO:
        assert (name, "I-AUROC") in rows, name
    expected = []
    for paper, _ in PAPERS:
        row = published.get((paper, "mvtec"))
        expected.append("–" if row is None else f"{row['image_auroc']:.1f}{'*' if row['quoted'] else ''}")
    assert rows[("mvtec", "I-AUROC")][1:4] == expected and expected.count("–") < 3
    assert rows[("headct", "P-AUROC")][0] == "n/a"  # classification-only
    assert rows[("isic", "I-AUROC")][0] == "n/a"  # no normal images
    assert "Not found (no <name>/meta.json" in table and "visa" in table.split("Not found (no <name>")[1]
    assert "| mvtec     | training-free |" in table
