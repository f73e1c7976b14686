"""Paths a recipe holds resolve against the recipe's own directory, so a recipe made in one directory
(relative paths, as a user types them) works from any other; a recipe without calibration ranges (pinned
by hand in the TUI) calibrates on its own calibration source and says so before it runs."""

from __future__ import annotations

import shutil

from tests.conftest import FIXTURES


def test_a_hand_pinned_recipe_with_relative_paths_works_from_another_directory(cli, tmp_path, monkeypatch):
    from layerdiff.recipe import pinned_recipe, write_recipe
    from layerdiff.report import load_report

    made = tmp_path / "made"
    made.mkdir()
    shutil.copy(FIXTURES / "cnn.onnx", made / "cnn.onnx")
    shutil.copytree(FIXTURES / "cnn_inputs", made / "inputs")
    monkeypatch.chdir(made)
    code, _, _ = cli("compare", "cnn.onnx", "--candidate", "ort-int8", "--inputs", "inputs", "-q", "-o", "r.json")
    assert code == 0
    report = load_report("r.json")
    write_recipe(pinned_recipe(report, [lay for lay in report.layers if lay.name == "conv2"]), "hand.recipe.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = cli("export", made / "hand.recipe.json", "--format", "onnx", "-o", "out.onnx")
    assert code == 0, err
    assert (elsewhere / "out.onnx").is_file()
    assert f"calibrating on {made / 'inputs'}" in err  # its own samples, found beside it, and said
