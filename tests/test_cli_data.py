import json

from salt_exp.cli import main


def test_data_check_json(kaggle_dir, capsys):
    assert main(["data", "check", str(kaggle_dir), "--json", "--k", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train"] == 12 and report["test"] == 4
    assert report["empty"] == 4 and abs(report["empty_fraction"] - 4 / 12) < 1e-12
    assert sum(report["coverage_bins"].values()) == 12 and report["coverage_bins"]["empty"] == 4
    assert report["blank_train"] == 1 and report["blank_train_with_salt"] == 0
    assert report["depth"] == {"min": 50.0, "max": 200.0, "mean": 125.0}
    assert report["mosaics"]["present"] and report["mosaics"]["train_covered"] == 1.0
    assert [b["size"] for b in report["folds"]["balance"]] == [4, 4, 4]
    assert report["folds"]["persisted"] is False and report["problems"] == []


def test_data_check_reports_problems_with_exit_1(kaggle_dir, capsys):
    victim = next((kaggle_dir / "train/images").iterdir())
    victim.write_bytes(b"broken")
    assert main(["data", "check", str(kaggle_dir)]) == 1
    out = capsys.readouterr().out
    assert "problems       1" in out and victim.name in out and "corrupt" in out


def test_data_check_missing_dir_is_one_line_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_data_folds_persists(kaggle_dir, capsys, tmp_path):
    assert main(["data", "folds", str(kaggle_dir), "--scheme", "mosaic", "--k", "2"]) == 0
    path = capsys.readouterr().out.splitlines()[0]
    assert path.endswith("mosaic-k2-seed42.csv")
    assert main(["data", "check", str(kaggle_dir), "--json", "--folds", "mosaic", "--k", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["folds"]["persisted"] is True
