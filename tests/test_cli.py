"""The `altlearn` command end to end, in subprocesses (as a user runs it)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import collect


class Outcome:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def altlearn(*args, cwd):
    """Run the app in this process, as `altlearn ARGS` would (a subprocess would pay torch's import)."""
    import contextlib
    import io

    from hydra.core.global_hydra import GlobalHydra

    from experiments.app import main
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["altlearn", *args]
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        GlobalHydra.instance().clear()
    return Outcome(code, out.getvalue(), err.getvalue())


def test_console_script_runs_as_a_process(tmp_path):
    """One real subprocess: the installed entry point, its exit code and its error text."""
    exe = Path(sys.executable).with_name("altlearn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from experiments.app import main; main()"]
    out = subprocess.run(cmd + ["learner=backprop", "data=nope"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode != 0 and "data/nope" in out.stderr


FAST = ["loop.progress=false", "loop.n_epochs=2"]


def test_single_run_writes_results(tmp_path):
    out = altlearn("learner=backprop", "data=blobs", *FAST, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "backprop: test accuracy" in out.stdout  # the printed summary names the metric
    assert (tmp_path / "run" / "results.nc").is_file()


def test_multirun_sweeps_seeds_and_collects(tmp_path):
    out = altlearn("-m", "learner=backprop", "seed=0,1", "data=blobs", *FAST,
                   f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ds = collect(tmp_path / "sweep")
    assert list(ds["seed"].values) == [0, 1]
    assert ds["accuracy"].dims[0] == "seed"


@pytest.mark.parametrize("args,message", [
    (["learner=nope"], "learner/nope"),
    (["learner=backprop", "data=nope"], "data/nope"),
    (["learner=backprop", "network=nope"], "network/nope"),
    (["learner=backprop", "data=blobs", "+network.input_shape=[784]"], "does not match the data's input shape"),
    (["learner=backprop", "learner.optimizer.name=adagrad"], "optimizer.name='adagrad'"),
    (["learner=backprop", "data=blobs", "+data.options.sigma=1"], "no option(s) sigma"),
    (["learner=backprop", "data=blobs", "data.options.n_train=400", "learner.optimizer.name=sgd",
      "learner.optimizer.lr=1e7", "+data.options.noise=5.0"], "diverged"),
    # the typed schemas (experiments/schemas.py) name the key, the value and the type
    (["learner=backprop", "loop.batch_size=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
    (["learner=backprop", "loop.batch_size=abc"], "full_key: loop.batch_size"),
    (["learner=backprop", "network.widths=[ten]"], "full_key: network.widths"),
    (["learner=backprop", "data=blobs", "data.val_size=1.0"], "data.val_size=1.0 is ambiguous"),
])
def test_bad_input_gives_clear_error_and_nonzero_exit(tmp_path, args, message):
    out = altlearn(*args, "loop.progress=false", "loop.n_epochs=2", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_missing_data_file_gives_clear_error(tmp_path):
    out = altlearn("learner=backprop", "data=mnist", f"data.options.root={tmp_path}/empty",
                   "data.options.download=false", "loop.progress=false", f"hydra.run.dir={tmp_path}/run",
                   cwd=tmp_path)
    assert out.returncode == 2
    assert "train-images-idx3-ubyte.gz" in out.stderr and "ALTLEARN_DATA" in out.stderr


def test_report_command_on_missing_folder(tmp_path, capsys):
    from analysis.__main__ import main
    assert main([str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_each_run_of_a_multirun_reports_its_own_peak_memory(tmp_path):
    """isolate: true (the default) trains each job in a fork, so the second job does not reuse the
    first one's freed heap and report ~0; both report the ~30 MiB of gradients and Adam state."""
    out = altlearn("-m", "learner=backprop", "seed=0,1", "data=blobs", "+network.widths=[1500,1500]",
                   "loop.progress=false", "loop.n_epochs=1", "report=false", f"hydra.sweep.dir={tmp_path}/sweep",
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    peaks = collect(tmp_path / "sweep")["peak_memory_total"].values / 2**20
    assert (peaks > 15).all() and peaks.max() < 2 * peaks.min(), peaks


def test_an_error_in_the_training_process_reaches_the_command(tmp_path):
    out = altlearn("learner=backprop", "data=blobs", "data.options.n_train=400", "learner.optimizer.name=sgd",
                   "learner.optimizer.lr=1e7", "+data.options.noise=5.0", "loop.progress=false",
                   f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2 and "diverged" in out.stderr and "step" in out.stderr


def test_a_two_thread_run_in_a_forked_child_does_not_hang(tmp_path, data_root):
    """GNU OpenMP hangs a child forked from a parent that ran multi-threaded torch; the app keeps
    its parent single-threaded (a real process, as a user runs it, with a deadline)."""
    exe = Path(sys.executable).with_name("altlearn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from experiments.app import main; main()"]
    out = subprocess.run(cmd + ["learner=backprop", "data=mnist", "+data.options.max_train=3000", "network=mlp_2x1000",
                                "loop.n_epochs=1", "loop.threads=2", "loop.progress=false", "report=false",
                                f"hydra.run.dir={tmp_path}/run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=240,
                         env={**os.environ, "ALTLEARN_DATA": str(data_root)})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "results.nc").is_file()
