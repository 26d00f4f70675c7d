"""The headless CLI: eval and layers on the demo, --help everywhere, user errors exit 2."""

import json
import subprocess
import sys

import pytest

from rcc_tui.main import build_parser, main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rcc_tui.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"eval", "layers", "train-demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"rcc-tui {name}" in capsys.readouterr().out



def test_the_engine_cli_has_only_the_headless_commands_and_no_app():
    """rcc.cli builds the headless commands; the app's (open, new, serve) come from rcc_tui.main."""
    from rcc.cli import main as headless

    engine = set(headless.build_parser()._subparsers._group_actions[0].choices)
    full = set(build_parser()._subparsers._group_actions[0].choices)
    assert full - engine == {"open", "new", "serve"} and {"eval", "session", "search"} <= engine
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom rcc.cli.main import main\ncode = main([])"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no command given" in done.stderr and len(done.stderr.splitlines()) == 1

@pytest.mark.slow
def test_eval_on_the_demo_prints_top1_and_is_repeatable(tmp_path):
    first = _run("eval", "--json", str(tmp_path / "a.json"), "--device", "cpu")
    assert first.returncode == 0, first.stderr
    assert "top1" in first.stdout and "rcc-mini" in first.stdout
    second = _run("eval", "--json", str(tmp_path / "b.json"), "--device", "cpu", "--no-cache")
    assert second.returncode == 0, second.stderr
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a["metrics"]["top1"] >= 0.90
    assert a["metrics"] == b["metrics"]
    assert (a["model"], a["data"], a["split"], a["task"]) == ("rcc-mini", "digits", "test", "zeroshot")
    assert "test/top1" in first.stdout and a["splits"].startswith("train 70 % / val 10 % / test 20 %")
    assert a["metrics"]["n"] == 360


def test_layers_lists_the_demo_inventory(tmp_path, capsys):
    assert main(["layers", "--json", str(tmp_path / "layers.json"), "--tower", "vision"]) == 0
    out = capsys.readouterr().out
    assert "visual.transformer.resblocks.3.attn.in_proj.q" in out
    listed = json.loads((tmp_path / "layers.json").read_text())
    # 4 blocks × (q, k, v, out, mlp_in, mlp_out) + the visual projection.
    assert len(listed["layers"]) == 25
    assert {layer["tower"] for layer in listed["layers"]} == {"vision"}


@pytest.mark.parametrize("args, words", [
    (["eval", "--model", "nope:thing"], ["nope:thing", "accepted forms"]),
    (["eval", "--data", "mnist"], ["mnist", "allowed"]),
    (["eval", "--data", "imagefolder:/no/such/dir"], ["/no/such/dir"]),
    (["eval", "--split", "validation"], ["validation", "train, val, test"]),
    (["eval", "--templates", "/no/templates.txt"], ["/no/templates.txt", "digits, cifar"]),
    (["eval", "--batch-size", "0"], ["--batch-size 0", "≥ 1"]),
    (["eval", "--device", "cuda:99"], ["cuda:99", "allowed"]),
    (["eval", "--device", "tpu"], ["tpu", "allowed"]),
    (["eval", "--task", "retrieval"], ["retrieval", "captions"]),
])
def test_user_errors_print_one_line_and_exit_2(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rcc-tui: error: ") and "\n" not in err
    for word in words:
        assert word in err


def test_eval_of_a_template_file_with_no_placeholder_is_refused(tmp_path, capsys):
    bad = tmp_path / "t.txt"
    bad.write_text("a photo\n")
    assert main(["eval", "--templates", str(bad)]) == 2
    assert "{c}" in capsys.readouterr().err


def _captions_csv(tmp_path) -> str:
    from hf_tiny import random_images

    rows = ["image,caption"]
    for i, image in enumerate(random_images(6, seed=1)):
        image.save(tmp_path / f"img{i}.png")
        rows += [f"img{i}.png,a photo of the red dog {i}", f"img{i}.png,the small cat number {i}"]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    return f"captions-csv:{tmp_path / 'captions.csv'}"


def test_eval_retrieval_end_to_end_on_a_tiny_hf_clip(tmp_path, capsys):
    from hf_tiny import save_tiny_clip

    model_dir = save_tiny_clip(tmp_path / "clip")
    data = _captions_csv(tmp_path)
    # --split all: the whole file (a test set in itself), not the test fifth of its three-way cut.
    assert main(["eval", "--model", f"hf:{model_dir}", "--data", data, "--split", "all",
                 "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["task"] == "retrieval" and result["split"] == "all"
    metrics = result["metrics"]
    assert (metrics["n_images"], metrics["n_texts"]) == (6, 12)
    # Recall@10 covers all 6 images, so every text finds its image; @1 of a random model is not 1.
    assert metrics["text_to_image_recall@10"] == 1.0 and metrics["image_to_text_recall@10"] == 1.0
    assert 0.0 <= metrics["text_to_image_recall@1"] <= metrics["text_to_image_recall@5"] <= 1.0


def test_eval_caption_end_to_end_on_a_tiny_blip(tmp_path):
    from hf_tiny import save_tiny_blip

    model_dir = save_tiny_blip(tmp_path / "blip", task="caption")
    data = _captions_csv(tmp_path)
    assert main(["eval", "--model", f"hf-blip:{model_dir}", "--data", data, "--split", "all",
                 "--json", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["task"] == "caption"
    assert result["metrics"]["n_images"] == 6
    assert 0.0 <= result["metrics"]["bleu4"] <= 1.0 and result["metrics"]["cider"] >= 0.0
    assert len(result["examples"]) == 5 and all(isinstance(e["generated"], str) for e in result["examples"])
    # A captioning model cannot do retrieval: refused with the tasks it can do.
    assert main(["eval", "--model", f"hf-blip:{model_dir}", "--data", data, "--task", "retrieval"]) == 2
