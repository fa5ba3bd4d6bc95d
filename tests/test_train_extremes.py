"""engine-train with numbers that break the arithmetic: exit 2 naming the flag, never a traceback."""
import pytest

from engine.cli.train import main

QUICK = ["--hidden", "5", "--iters", "3", "--train-size", "20", "--test-size", "10", "--no-progress"]


@pytest.mark.parametrize("flags, named", [
    (["--weight-init-std", "1e200"], "--h = 0.0001 is lost to rounding at weights of size 4e+200"),
    (["--h", "1e-300"], "--h = 1e-300 is lost to rounding at weights of size 0.04 (4 x --weight-init-std"),
])
def test_a_step_lost_at_the_initial_weights_is_refused_before_any_work(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    assert main([*QUICK, "--out", str(out), *flags]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_a_diverging_lr_ends_with_exit_2_naming_lr(tmp_path, capsys):
    assert main([*QUICK, "--out", str(tmp_path / "run"), "--lr", "1e308"]) == 2
    err = capsys.readouterr().err
    assert "training diverged; try a smaller --lr than 1e+308" in err and "Traceback" not in err
