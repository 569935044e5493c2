"""The CLI end to end on a tiny model: finetune, predict, and clean errors."""

import json

import pytest

from secure_assist.cli import main

TINY_RUN = ["finetune", "--model", "tiny-llama", "--train-samples", "48", "--eval-samples", "24",
            "--epochs", "3", "--rank", "4", "--quiet"]


def test_finetune_then_predict(tmp_path, capsys) -> None:
    assert main(TINY_RUN + ["--workdir", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out)
    # The unprotected run is safeguarded too: 10 of the 48 samples are its validation split (the floor).
    assert summary["n_train"] == 38 and summary["n_eval"] == 24 and summary["safeguard"]["validation_samples"] == 10
    assert summary["device_forwards_epoch1"] == 38 and summary["device_forwards_after_epoch1"] == 0
    assert summary["cache_samples"] == 38 and summary["cache_reads"] == 76
    # The device's cost is its uploads' forward passes and its safeguard's on the validation split: scoring the 24
    # evaluation samples afterwards is measurement and is not counted.
    assert summary["device_forwards"] == 38 + 10 + 24
    assert summary["device_seconds"] > summary["device_seconds_epoch1"] > 0
    assert summary["bytes_up"] > 38 * 2 * 64 * 2
    assert 0 <= summary["accuracy"] <= 1
    assert main(["predict", summary["model_file"], "--text", "great fun", "--text", "a bore", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["great fun", "a bore"]
    assert all(r["label"] in ("0", "1") for r in rows)


def test_custom_task_from_user_file(tmp_path, capsys) -> None:
    data = tmp_path / "reviews.jsonl"
    rows = [{"review": f"sample {i} was {'good' if i % 2 else 'bad'}", "stars": "hi" if i % 2 else "lo"}
            for i in range(30)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["finetune", "--model", "tiny-llama", "--task", "custom", "--train-file", str(data),
            "--template", "Review: {text}\nRating:", "--label-words", " bad| good", "--labels", "lo,hi",
            "--text-column", "review", "--label-column", "stars", "--epochs", "2", "--rank", "2",
            "--quiet", "--workdir", str(tmp_path / "run")]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n_train"], summary["n_eval"]) == (14, 6)  # 10 of the 24 training rows validate


@pytest.mark.parametrize("argv,message", [
    (["--model", "tiny-nothing"], "unknown backbone"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--task", "custom"], "a custom task needs"),
    (["--train-file", "/nonexistent.tsv"], "does not exist"),
    (["--layers", "5"], "within 1..2"),
    (["--weight-decay", "-1"], "weight_decay must be zero or positive"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, argv, message) -> None:
    assert main(TINY_RUN + ["--workdir", str(tmp_path / "run")] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_config_key_and_existing_workdir(tmp_path, capsys) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"epochs": 2, "learning_rat": 0.1}))
    assert main(["finetune", "--config", str(config)]) == 2
    assert "unknown FinetuneConfig keys ['learning_rat']" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("old")
    assert main(TINY_RUN + ["--workdir", str(tmp_path / "run")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.safetensors"), "--text", "x"]) == 2


def test_serve_rejects_bad_training_settings_before_listening(tmp_path, capsys) -> None:
    argv = ["serve", "--keys", str(tmp_path / "keys"), "--workdir", str(tmp_path / "srv"), "--adapter-lr-scale", "-0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "adapter_lr_scale must be zero or positive" in err and "Traceback" not in err


def test_serve_shows_its_limits_and_rejects_bad_ones(tmp_path, capsys) -> None:
    from dataclasses import fields

    from protocol.server.limits import ServerLimits

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert all("--" + f.name.replace("_", "-") in help_text for f in fields(ServerLimits))
    base = ["serve", "--keys", str(tmp_path / "keys"), "--workdir", str(tmp_path / "srv")]
    for flags, message in ((["--max-width", "0"], "--max-width must be a whole number >= 1"),
                           (["--read-seconds", "nan"], "--read-seconds must be a positive number"),
                           (["--max-frame-mib", "32", "--max-partial-frames-mib", "16"], "at least --max-frame-mib")):
        assert main(base + flags) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "srv").exists()


def test_privacy_warning_is_one_line(tmp_path, capsys) -> None:
    import warnings

    shown = warnings.showwarning
    argv = ["finetune", "--model", "tiny-llama", "--train-samples", "8", "--eval-samples", "4", "--epochs", "1",
            "--rank", "2", "--mechanism", "none", "--quiet", "--workdir", str(tmp_path / "run")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: mechanism 'none': Δ (and with it every label) and the pivot activations "
                                "are sent to the server unprotected"]
    assert warnings.showwarning is shown  # library callers keep Python's own warnings afterwards
