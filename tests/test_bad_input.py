"""The bad-input battery: for every entry point and every class of bad input, exit 2, one line
that names the bad value, and nothing written (no database, no trial, no folder, no file changed).

Study and data commands run in-process (their `main` returns the exit code); the Hydra training
CLI runs as a real subprocess, since its error path goes through Hydra."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from mhtrain.data import cifar100mh
from mhtrain.study import __main__ as study_main
from mhtrain.study import cli
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # the bad-input battery: a finished study per case

TINY = ["data.verify=false", "data.val_size=100", "trainer.max_epochs=1"]


def tree(path: Path) -> dict[str, str]:
    """Every file under `path` with a digest of its bytes: what 'nothing written' compares."""
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path: Path, tiny_data: Path, monkeypatch) -> Path:
    """A folder holding one finished study (lr, 1 trial) and an empty data directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    code = cli.main("lr", "", ["--storage", "sqlite:///s.db", "--n-trials", "1", "--no-progress",
                               f"data.data_dir={tiny_data}", *TINY])
    assert code == 0
    return tmp_path


def one_error_line(err: str, *named: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for value in named:
        assert value in lines[0], (value, lines[0])


STUDY_CASES = [  # (argv after the study name, what the error line must name)
    (["--n-trials", "0"], "--n-trials 0"),
    (["--timeout", "-1"], "--timeout -1"),
    (["--workers", "0"], "--workers 0"),
    (["--study-name", ""], "--study-name"),
    (["--storage", "sqlite:///"], "in memory"),
    (["--storage", "sqlite:///:memory:"], "in memory"),
    (["--storage", "sqlite:////proc/no/such/x.db"], "cannot create"),
    (["--storage", "sqlite:///empty"], "is a directory"),
    (["--storage", "mongodb://x"], "mongodb://x"),
    (["--sampler", "grid"], "grid search needs `step`"),
    (["--pruner", "asha"], "pruner='asha': must be one of none, median"),
    (["--pruner", "sha:report_every"], "--pruner sha:report_every: write arguments as key=value"),
    (["--pruner", "sha:report_every=0.3"], "pruner.report_every=0.3: must be 1 or 1/n of an epoch"),
    (["--pruner", "sha:report_every=0.25", "--population", "2"], "members leave a population at epoch ends"),
    (["--experiment", "no_such_experiment"], "no_such_experiment"),
    (["--metric", "val/colour_acc"], "val/colour_acc"),
    (["model.optimizer.lrr=0.1"], "model.optimizer.lrr"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    (["data.train_subset=-5"], "data.train_subset=-5"),
    (["data.train_subset=600"], "data.train_subset=600 is more than the 500 training images"),
    (["model.optimizer.lr=abc"], "'lr': 'abc'"),
    (["model.optimizer.lr=null"], "'lr': None"),
    (["model.loss_weights.colour=1.0"], "colour"),
    (["model.weighting=magic"], "magic"),
    (["data.data_dir=empty"], "empty"),
    (["--warm-start", "nosuch"], "'nosuch'"),
    (["--warm-start", "lr:x"], "lr:x"),
    # configs Lightning accepts and fails on only in the first epoch, once per trial
    (["trainer.check_val_every_n_epoch=2"], "trainer.check_val_every_n_epoch=2 > trainer.max_epochs=1"),
    (["trainer.check_val_every_n_epoch=2", "trainer.max_epochs=4"], "model.scheduler steps on val/loss"),
    (["++trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
    (["data.train_subset=abc"], "data.train_subset='abc': must be a positive integer"),
]


@pytest.mark.parametrize(("argv", "named"), STUDY_CASES, ids=[" ".join(a) for a, _ in STUDY_CASES])
def test_study_cli(workdir, tiny_data, capsys, argv, named):
    before = tree(workdir)
    data = [] if any(a.startswith("data.data_dir") for a in argv) else [f"data.data_dir={tiny_data}"]
    storage = [] if "--storage" in argv else ["--storage", "sqlite:///s.db"]
    code = cli.main("lr", "", [*storage, "--n-trials", "2", "--no-progress", *data, *TINY, *argv])
    assert code == 2
    one_error_line(capsys.readouterr().err, named)
    assert tree(workdir) == before


def test_resuming_as_another_study_is_refused_with_the_difference(workdir, tiny_data, capsys):
    before = tree(workdir)
    code = cli.main("loss_weights", "", ["--storage", "sqlite:///s.db", "--study-name", "lr",
                                         "--no-progress", f"data.data_dir={tiny_data}", *TINY])
    assert code == 2
    one_error_line(capsys.readouterr().err, "made differently", "search_space",
                   "model.loss_weights.thickness None -> ")
    assert tree(workdir) == before


def test_resuming_at_another_fidelity_is_refused_unless_asked(workdir, tiny_data, capsys):
    args = ["--storage", "sqlite:///s.db", "--n-trials", "2", "--no-progress",
            f"data.data_dir={tiny_data}", *TINY, "data.train_subset=300"]
    before = tree(workdir)
    assert cli.main("lr", "", args) == 2
    one_error_line(capsys.readouterr().err, "overrides: now with ['data.train_subset=300']")
    assert tree(workdir) == before
    assert cli.main("lr", "", ["--allow-changes", *args]) == 0
    out = capsys.readouterr().out
    assert "epochs used: 2 of 2 " in out  # each trial's own max_epochs, not today's


@pytest.fixture
def study_config(tmp_path: Path):
    """Write a study config into conf/study for one test, and remove it after."""
    written = []

    def write(text: str) -> str:
        path = ROOT / "conf" / "study" / f"zz_test_{len(written)}.yaml"
        path.write_text(text)
        written.append(path)
        return path.stem

    yield write
    for path in written:
        path.unlink()


@pytest.mark.parametrize(("body", "named"), [
    ("n_trails: 1\n", "n_trails"),
    ("pruner_typo: none\n", "pruner_typo"),
    ("search_space:\n  model.optimizer.lr: {type: float, low: 0.001, high: 0.1, setp: 0.01}\n", "setp"),
    ("overrides: trainer.max_epochs=1\n", "overrides must be a list"),
    ("population: 0\n", "population=0"),
    ("pruner: {name: sha, min_resource: 5}\n", "min_resource=5 exceeds"),
    ("pruner: {name: sha, reduction: 3}\n", "reduction"),
    ("search_space:\n  model.optimizer.lr: {type: float, low: 0.1, high: 0.001}\n", "low=0.1 >= high=0.001"),
])
def test_study_config_typos(workdir, tiny_data, capsys, study_config, body, named):
    base = "experiment: multihead_cnn_mnist\n"
    if "search_space" not in body:
        base += "search_space:\n  model.optimizer.lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
    config = study_config(base + body)
    before = tree(workdir)
    code = study_main.main(["run", config, "--storage", "sqlite:///s.db", "--no-progress",
                            f"data.data_dir={tiny_data}", *TINY])
    assert code == 2
    one_error_line(capsys.readouterr().err, named)
    assert tree(workdir) == before


@pytest.mark.parametrize(("argv", "named"), [
    (["export", "lr", "--storage", "sqlite:///typo.db"], "typo.db"),
    (["export", "nope", "--storage", "sqlite:///s.db"], "'nope'"),
])
def test_export(workdir, capsys, argv, named):
    before = tree(workdir)
    assert study_main.main(argv) == 2
    one_error_line(capsys.readouterr().err, named)
    assert tree(workdir) == before


def test_export_of_a_study_without_a_completed_trial(workdir, tiny_data, capsys):
    import optuna

    from mhtrain.study.storage import open_storage

    optuna.create_study(study_name="empty_study", storage=open_storage("sqlite:///s.db"))
    before = tree(workdir)
    assert study_main.main(["export", "empty_study", "--storage", "sqlite:///s.db"]) == 2
    one_error_line(capsys.readouterr().err, "empty_study has no completed trial")
    assert tree(workdir) == before


@pytest.mark.parametrize(("damage", "named"), [
    (lambda root: (root / cifar100mh.INFO).write_text("{not json"), "not valid JSON"),
    (lambda root: (root / "train_batch").write_bytes(b"not a pickle"), "not a CIFAR batch file"),
    (lambda root: (root / "train_batch").write_bytes(__import__("pickle").dumps({"data": []})),
     "needs keys 'data' and 'labels'"),
])
def test_cifar100mh_validate(tiny_data, tmp_path, capsys, damage, named):
    root = tmp_path / "c100"
    assert cifar100mh.main(["build", "--from", "mnist", "--out", str(root), f"data.data_dir={tiny_data}",
                            "data.verify=false", "data.val_size=100"]) == 0
    damage(root)
    capsys.readouterr()
    assert cifar100mh.main(["validate", str(root)]) == 2
    one_error_line(capsys.readouterr().err, named)


@pytest.mark.parametrize(("override", "named"), [
    ("trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("model.optimizer.lr=abc", "'lr': 'abc'"),
    ("data.train_subset=-5", "data.train_subset=-5"),
    ("data.train_subset=600", "data.train_subset=600 is more than the 500 training images"),
    ("trainer.check_val_every_n_epoch=2", "trainer.check_val_every_n_epoch=2 > trainer.max_epochs=1"),
    ("++trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
])
def test_training_cli(tiny_data, tmp_path, override, named):
    proc = subprocess.run(
        [sys.executable, "-m", "mhtrain.train", "experiment=multihead_cnn_mnist",
         f"data.data_dir={tiny_data}", f"paths.output_dir={tmp_path / 'run'}", *TINY, override],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    one_error_line(proc.stderr, named)
    assert not (tmp_path / "run").exists()


# --- wrongly typed stored records: one line, and the command goes on where that is safe ---------

RUNNING = "running"  # a trial of a worker that is gone, added to the real study


def planted_study(real: tuple[dict, list], url: str, name: str, where: str, attr: str, value: object) -> None:
    """The real study copied into `url` as `name` (and `name`_ref), `attr` set to `value` on the
    study, on its best trial, or on a RUNNING trial whose worker is gone."""
    import optuna

    from mhtrain.study.ledger import owner
    from tests.test_untrusted import copied

    attrs, trials = real
    best = max(trials, key=lambda t: t.value)
    for study_name in (name, f"{name}_ref"):
        config = {**attrs["config"], "name": study_name}
        planted = {attr: value} if where == "study" else {}
        ostudy = copied(url, study_name, {**attrs, "config": config, **planted}, [])
        user = {**best.user_attrs, **({attr: value} if where == "best" else {})}
        if attr == "seed" and where == "best":
            user["overrides"] = [f"seed={value}" if o.startswith("seed=") else o for o in user["overrides"]]
        for t in [best, *(t for t in trials if t is not best)]:  # the best first: the best of ties
            ostudy.add_trial(optuna.trial.create_trial(
                value=t.value, params=t.params, distributions=t.distributions,
                user_attrs=user if t is best else t.user_attrs))
        if where == RUNNING:
            gone = value if attr == "owner" else {**owner(), "started": "1"}  # this host, not this pid
            user = {**trials[0].user_attrs, "owner": gone, **({} if attr == "owner" else {attr: value})}
            ostudy.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.RUNNING, params=trials[0].params,
                distributions=trials[0].distributions, user_attrs=user))


@pytest.fixture(scope="module")
def real(tiny_data, tmp_path_factory):
    from tests.test_untrusted import real_trials

    return real_trials(tiny_data, tmp_path_factory.mktemp("real"))


RECORD_CASES = [  # (where, attribute, value, command, exit code, what the one line names)
    (RUNNING, "owner", "x", "resume", 0, "stored owner = 'x' ignored"),
    (RUNNING, "owner", ["a"], "resume", 0, "stored owner = <a list of 1 item(s)> ignored"),
    (RUNNING, "retries", "x", "resume", 0, "stored retries = 'x' ignored"),
    ("best", "epochs", "x", "resume", 0, "stored epochs = 'x' ignored"),
    ("best", "tracking", "x", "resume", 0, "stored tracking = 'x' ignored"),
    ("best", "overrides", 5, "confirm", 2, "stored overrides = 5 refused"),
    ("best", "seed", 5_000_000_000, "export", 2, "stored seed = 5000000000 refused"),
    ("study", "reruns", {"trial1|seed1000": {"seconds": 1.0}}, "compare", 2, "(no test/digit_acc)"),
    ("best", "seconds", "x", "compare", 2, "stored seconds = 'x' refused"),
]


def command(name: str, url: str, typed: list[str], which: str) -> int:
    """The command a user types on the planted storage, in this process; its exit code."""
    run = ["--study-name", name, "--storage", url, "--no-progress", "--n-trials", "2", *typed]
    if which == "resume":
        return cli.main("lr", "", run)
    if which == "confirm":
        return cli.main("lr", "", [*run, "--confirm", "2", "--confirm-seeds", "2"])
    if which == "export":
        return study_main.main(["export", name, "--config", "lr", "--storage", url, "--as-searched", *typed])
    from mhtrain.study.local import trust
    from mhtrain.study.study_config import load
    from tests.test_untrusted import load_compare_cli

    for arm in (name, f"{name}_ref"):  # as each arm's own study command declared its config
        trust(load("lr", name=arm, extra_overrides=typed))
    return load_compare_cli().main(["--arms", name, "--reference", f"{name}_ref", "--storage", url,
                                    "--seeds", "2", *typed])


@pytest.mark.parametrize(("where", "attr", "value", "which", "code", "named"), RECORD_CASES)
def test_a_wrongly_typed_record_is_one_line(real, tiny_data, tmp_path, monkeypatch, capsys, where, attr,
                                            value, which, code, named):
    """Each was a traceback. A resume goes on (a trial with a broken owner is reaped, a broken
    count is not trusted) with one warning line; what cannot go on refuses before any work."""
    import uuid

    import optuna

    from tests.conftest import tiny_for

    monkeypatch.chdir(tmp_path)
    url, name = f"sqlite:///{tmp_path / 'shared.db'}", f"lr_{uuid.uuid4().hex[:8]}"
    planted_study(real, url, name, where, attr, value)
    capsys.readouterr()
    got = command(name, url, tiny_for(tiny_data, epochs=1), which)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "A new study created" not in line]
    assert got == code, err
    assert len(err) == 1 and named in err[0], err
    assert err[0].startswith("error: " if code else "warning: "), err
    if where == RUNNING and attr == "owner":  # reaped, not fatal to the resume
        reaped = optuna.load_study(study_name=name, storage=url).trials[2]
        assert reaped.state == optuna.trial.TrialState.FAIL
    assert not (ROOT / "conf" / "experiment" / f"best_{name}.yaml").exists()
    assert not (tmp_path / "runs" / "compare").exists()  # refused before anything trained


def test_an_export_refused_for_its_checkpoint_leaves_no_file(real, tiny_data, tmp_path, monkeypatch, capsys):
    """A kept checkpoint that is not in the study's artifact folder: one line, and no best_*.yaml."""
    import uuid

    import optuna

    monkeypatch.chdir(tmp_path)
    url, name = f"sqlite:///{tmp_path / 'shared.db'}", f"lr_{uuid.uuid4().hex[:8]}"
    planted_study(real, url, name, "best", "checkpoint", "0a1b2c3d-no-such-artifact")
    ostudy = optuna.load_study(study_name=name, storage=url)
    ostudy.set_user_attr("artifact_dir", str(tmp_path / "runs" / "a"))
    capsys.readouterr()
    from tests.conftest import tiny_for

    argv = ["export", name, "--config", "lr", "--storage", url, *tiny_for(tiny_data, epochs=1)]
    assert study_main.main(argv) == 2
    one_error_line(capsys.readouterr().err, "checkpoint 0a1b2c3d-no-such-artifact is not in")
    assert not (ROOT / "conf" / "experiment" / f"best_{name}.yaml").exists()
