"""benchmarks/training_curves.py: the losses it reads from a run's history, the values it prints, its errors."""

import json

import pytest

from benchmarks.training_curves import ITM_CHANCE, main


def test_curves_of_a_run_history(tmp_path, capsys):
    history = [{"step": s, "loss": 3.0 - s / 100, "loss_itc": 2.0, "loss_itm": 0.64 - s / 1000, "lr": 1e-3}
               for s in range(10, 210, 10)]
    (tmp_path / "results.json").write_text(json.dumps({"history": history}))
    result = main([str(tmp_path), "--window", "20"])
    assert set(result["losses"]) == {"loss", "loss_itc", "loss_itm"}  # the learning rate is no loss
    # step 200, window 20: the logs of steps 190 and 200
    assert result["losses"]["loss_itm"][200] == pytest.approx(0.64 - 0.195)
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    assert f"ITM chance: {ITM_CHANCE:.3f}" in capsys.readouterr().out
    assert ITM_CHANCE == pytest.approx(0.6365, abs=1e-4)


def test_a_folder_without_history_is_named(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    (tmp_path / "results.json").write_text(json.dumps({"history": []}))
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
