"""The command lines of the official FAPrompt and Bayes-PFL train.sh / test.sh, fed to our
scripts: each flag is accepted with its official meaning, or with a note saying what replaces it.

The command lines are those scripts' flags and values; only paths that must exist point at
temporary files. ``plan`` / ``_configure`` resolve everything a run would use without building
a model, so the full-size settings (ViT-L-14-336 at 518 px) are checked as they are; a second
pair of tests runs the same commands end to end with the sizes swapped for the tiny model.
"""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

from engine import configure
from engine.official import apply_official_flags
from models.backbone import BackboneConfig
from models import methods
from models.factory import Checkpoint, read_checkpoint
from scripts import test_script, train_script
from utils.errors import run_cli

CONFIG_JSON = "./open_clip_local/model_configs/ViT-L-14-336.json"  # need not exist: it has no effect here
BAYES_TRAIN = {  # Bayes-PFL train.sh: "train on the VisA dataset" and "train on the MVTec-AD dataset"
    name: ["--dataset", name, "--train_data_path", "{data}", "--val_data_path", "{data}",
           "--save_path", f"{{tmp}}/my_exps/train_{name}", "--pretrained_path", "{weights}",
           "--prompt_context_len", "5", "--prompt_num", "3", "--prompt_state_len", "5", "--device_id", device,
           "--learning_rate", "0.0001", "--features_list", "6", "12", "18", "24", "--pretrained", "openai",
           "--image_size", "518", "--batch_size", "32", "--epochs", "30", "--sample_num", "5", "--num_flows", "10",
           "--config_path", CONFIG_JSON, "--model", "ViT-L-14-336", "--seed", "333", "--alpha", "0.6"]
    for name, device in (("visa", "0"), ("mvtec", "1"))
}
BAYES_TEST = {  # Bayes-PFL train.sh (it holds the test commands too): "test on the MVTec-AD / VisA dataset"
    name: ["--dataset", name, "--data_path", "{data}", "--checkpoint_path", "{checkpoint}",
           "--save_path", f"{{tmp}}/results/test_{name}", "--pretrained_path", "{weights}",
           "--prompt_context_len", "5", "--prompt_num", "3", "--prompt_state_len", "5", "--device_id", "0",
           "--features_list", "6", "12", "18", "24", "--pretrained", "openai", "--image_size", "518",
           "--seed", "333", "--config_path", CONFIG_JSON, "--model", "ViT-L-14-336", "--sample_num", "10",
           "--num_flows", "10"]
    for name in ("mvtec", "visa")
}
FAPROMPT_TRAIN = ["--dataset", "mvtecad", "--train_data_path", "{data}", "--save_path",
                  "{tmp}/checkpoints/trained_on_mvtecad/", "--features_list", "6", "12", "18", "24",
                  "--image_size", "518", "--batch_size", "8", "--print_freq", "1", "--epoch", "15",
                  "--save_freq", "1", "--depth", "9", "--n_ctx", "12", "--t_n_ctx", "4"]
FAPROMPT_TEST = ["--dataset", "SDD", "--data_path", "{data}",
                 "--save_path", "{tmp}/results/trained_on_mvtecad/zero_shot",
                 "--checkpoint_path", "{checkpoint}", "--features_list", "6", "12", "18", "24", "--image_size", "518",
                 "--seed", "111", "--depth", "9", "--n_ctx", "12", "--t_n_ctx", "4", "--metrics", "image-pixel-level"]
OFFICIAL_CONFIG = {  # what read_checkpoint derives from the released files' tensor shapes
    "bayes_pfl": {"prompt_num": 3, "prompt_context_len": 5, "prompt_state_len": 5, "num_flows": 10},
    "faprompt": {"abnormal_prompts": 10, "normal_ctx": 5, "abnormal_ctx": 2, "depth": 9, "t_n_ctx": 4, "dap_k": 10},
}


def _fill(argv, **values):
    return [a.format(**{k: str(v) for k, v in values.items()}) for a in argv]


def _device_note_or_error(notes, device_id: int):
    """--device_id N means GPU N; without a GPU the run falls back to the CPU, as officially."""
    if not torch.cuda.is_available():
        return any(n.startswith(f"--device_id {device_id}: no CUDA GPU is visible") for n in notes)
    return True


@pytest.fixture()
def weights(tmp_path):
    path = tmp_path / "ViT-L-14-336px.pt"
    path.write_bytes(b"stands in for the CLIP weights; planning does not read it")
    return path


@pytest.mark.parametrize("name", ["visa", "mvtec"])
def test_official_bayes_pfl_train_command(name, tmp_path, data, weights):
    argv = _fill(BAYES_TRAIN[name], data=data, tmp=tmp_path, weights=weights)
    if torch.cuda.is_available() and name == "mvtec" and torch.cuda.device_count() < 2:
        with pytest.raises(Exception, match=r"^--device_id 1: only 1 GPU\(s\) are visible"):
            train_script.plan(argv)
        return
    args, run = train_script.plan(argv)
    assert run.method == "bayes_pfl"  # inferred from the Bayes-PFL flags, as the official script is Bayes-PFL
    assert run.lr == dict(methods.get("bayes_pfl").recipe.lr)  # --learning_rate 0.0001 is unused, as officially
    assert run.epochs == 30 and run.batch_size == 32 and args.seed == 333
    assert args.val_sample_num == 5 and run.config.sample_num == 10  # --sample_num: validation; test R untouched
    assert (run.config.prompt_num, run.config.prompt_context_len, run.config.prompt_state_len) == (3, 5, 5)
    assert run.config.num_flows == 10 and run.config.features_list == (6, 12, 18, 24)
    assert run.backbone.model == "ViT-L-14-336" and run.backbone.image_size == 518
    assert run.backbone.pretrained == str(weights)  # --pretrained_path is the weight file
    assert str(run.device) == ("cpu" if not torch.cuda.is_available() else "cuda:0")
    notes = "\n".join(run.notes)
    assert ("--learning_rate 0.0001 has no effect on bayes_pfl" in notes and "--learning_rate_prompt" in notes
            and "--learning_rate_PFL" in notes and "--learning_rate_linear" in notes)
    assert f"--config_path {CONFIG_JSON}: " in notes and "--alpha 0.6: " in notes
    assert "--val_data_path is read only with --val_protocol target" in notes
    assert _device_note_or_error(run.notes, int(BAYES_TRAIN[name][BAYES_TRAIN[name].index("--device_id") + 1]))
    assert all("\n" not in n for n in run.notes)


def test_official_faprompt_train_command(tmp_path, data):
    args, run = train_script.plan(_fill(FAPROMPT_TRAIN, data=data, tmp=tmp_path))
    assert run.method == "faprompt" and run.lr == {"all": 1e-3}
    assert run.epochs == 15 and run.batch_size == 8 and args.save_freq == 1 and args.seed == 111
    assert (run.config.depth, run.config.t_n_ctx) == (9, 4) and run.backbone.image_size == 518
    notes = "\n".join(run.notes)
    assert "--print_freq 1: no effect" in notes and "--n_ctx 12: FAPrompt: passed but unused" in notes


def test_learning_rate_keeps_its_meaning_for_faprompt(tmp_path, data):
    _, run = train_script.plan(["--train_data_path", str(data), "--learning_rate", "0.0005"])
    assert run.lr == {"all": 0.0005} and not run.notes


def test_num_flows_short_spelling():
    args = train_script.build_parser().parse_args(["--train_data_path", "x", "-nf", "7"])
    assert args.num_flows == 7


def _official_checkpoint(method, path):
    return Checkpoint(method, BackboneConfig(**methods.get(method).backbone), dict(OFFICIAL_CONFIG[method]),
                      {}, f"official-{method}", path=str(path))


@pytest.mark.parametrize("name", ["mvtec", "visa"])
def test_official_bayes_pfl_test_command(name, tmp_path, data, weights, monkeypatch):
    checkpoint = tmp_path / "train_visa.pth"
    monkeypatch.setattr(configure, "read_checkpoint", lambda path: _official_checkpoint("bayes_pfl", path))
    args = test_script.build_parser().parse_args(
        _fill(BAYES_TEST[name], data=data, tmp=tmp_path, weights=weights, checkpoint=checkpoint))
    notes = apply_official_flags(args, "test")
    method, config, backbone, _, seed_from = configure.configure_test(args)
    assert method == "bayes_pfl" and config.sample_num == 10 and config.num_flows == 10  # R = 10 at test
    assert config.seed == 333 and seed_from == "--seed"
    assert config.features_list == (6, 12, 18, 24) and (config.prompt_num, config.prompt_state_len) == (3, 5)
    assert config.official_noise and backbone.activation == "gelu"  # an official file: official behaviour
    assert backbone.pretrained == str(weights) and backbone.image_size == 518 and backbone.model == "ViT-L-14-336"
    assert f"--config_path {CONFIG_JSON}: " in "\n".join(notes) and _device_note_or_error(notes, 0)


def test_official_faprompt_test_command(tmp_path, data, monkeypatch):
    checkpoint = tmp_path / "epoch_7.pth"
    monkeypatch.setattr(configure, "read_checkpoint", lambda path: _official_checkpoint("faprompt", path))
    args = test_script.build_parser().parse_args(_fill(FAPROMPT_TEST, data=data, tmp=tmp_path, checkpoint=checkpoint))
    notes = apply_official_flags(args, "test")
    method, config, backbone, _, _ = configure.configure_test(args)
    assert method == "faprompt" and (config.depth, config.t_n_ctx) == (9, 4) and backbone.image_size == 518
    assert args.seed == 111 and args.metrics == "image-pixel-level" and args.dataset == "SDD"
    assert config.dap_select == "first"  # an official file: official behaviour
    assert any(n.startswith("--n_ctx 12: FAPrompt: passed but unused") for n in notes)


def test_official_bayes_pfl_commands_run_end_to_end(tmp_path, data, tiny_model, caplog):
    """The same commands on the tiny model: only the sizes change (model, layers, pixels, batch, epochs)."""
    tiny_sizes = {"ViT-L-14-336": tiny_model, "518": "32", "32": "4", "30": "1"}
    weights = tmp_path / "tiny_clip.pt"
    torch.save(open_clip.create_model(tiny_model, pretrained=None).state_dict(), weights)

    def shrink(argv):
        argv = [tiny_sizes.get(a, a) for a in argv]
        start = argv.index("--features_list")
        return argv[:start + 1] + ["2", "4"] + argv[start + 5:]

    train = shrink(_fill(BAYES_TRAIN["visa"], data=data, tmp=tmp_path, weights=weights))
    # the tiny dataset needs a larger held-out share to validate on every category
    assert run_cli(train_script.main, train + ["--num_workers", "0", "--val_fraction", "0.34"]) == 0
    final = tmp_path / "my_exps" / "train_visa" / "final.pth"
    saved = read_checkpoint(str(final))
    assert saved.backbone.pretrained == str(weights) and saved.method == "bayes_pfl"
    assert "--learning_rate 0.0001 has no effect on bayes_pfl" in caplog.text
    test = shrink(_fill(BAYES_TEST["visa"], data=data, tmp=tmp_path, weights=weights, checkpoint=final))
    test[test.index("--sample_num") + 1] = "2"
    test[test.index("--dataset") + 1] = "synthetic"  # the generated data has its own categories
    assert run_cli(test_script.main, test + ["--num_workers", "0"]) == 0
    results = json.loads((tmp_path / "results" / "test_visa" / "results.json").read_text())
    assert results["config"]["sample_num"] == 2 and results["seed"] == 333 and results["pretrained"] == str(weights)
    assert "Traceback" not in caplog.text


# Every flag of the official argument parsers, at its official default (paths: any text).
OFFICIAL_DEFAULTS = {
    ("train", "bayes_pfl"): "--dataset visa --model ViT-L-14-336 --pretrained openai --features_list 6 12 18 24 "
                            "--train_data_path D --val_data_path D --save_path S --config_path C --pretrained_path P "
                            "-nf 10 --prompt_context_len 5 --prompt_num 3 --prompt_state_len 5 --learning_rate 0.0001 "
                            "--learning_rate_PFL 0.001 --learning_rate_prompt 0.001 --learning_rate_linear 0.0001 "
                            "--sample_num 5 --batch_size 32 --image_size 518 --epochs 30 --alpha 0.999 "
                            "--print_freq 1 --save_freq 1 --device_id 0 --seed 111",
    ("train", "faprompt"): "--train_data_path D --save_path S --dataset mvtec --depth 9 --n_ctx 12 --t_n_ctx 4 "
                           "--feature_map_layer 0 1 2 3 --features_list 6 12 18 24 --epoch 10 --learning_rate 0.001 "
                           "--batch_size 8 --image_size 518 --print_freq 1 --save_freq 1 --seed 111",
    ("test", "bayes_pfl"): "--dataset mvtec --model ViT-L-14-336 --image_size 518 --pretrained openai "
                           "--features_list 6 12 18 24 --data_path D --save_path S --config_path C --pretrained_path P "
                           "--checkpoint_path K --num_flows 10 --prompt_context_len 5 --prompt_num 3 "
                           "--prompt_state_len 5 --sample_num 10 --device_id 2 --seed 111",
    ("test", "faprompt"): "--data_path D --save_path S --checkpoint_path K --dataset mvtec --features_list 6 12 18 24 "
                          "--image_size 518 --depth 9 --n_ctx 12 --t_n_ctx 4 --feature_map_layer 0 1 2 3 "
                          "--metrics pixel-level --seed 111 --sigma 10",
}


@pytest.mark.parametrize("script, repo", sorted(OFFICIAL_DEFAULTS))
def test_every_official_flag_parses(script, repo):
    parser = (train_script if script == "train" else test_script).build_parser()
    args = parser.parse_args(OFFICIAL_DEFAULTS[script, repo].split())
    if script == "train" and repo == "bayes_pfl":
        assert args.val_sample_num == 5 and args.num_flows == 10 and args.alpha == 0.999
    if script == "test" and repo == "bayes_pfl":
        assert args.sample_num == 10 and args.device_id == 2
    if repo == "faprompt":
        assert args.n_ctx == 12 and args.feature_map_layer == [0, 1, 2, 3]
