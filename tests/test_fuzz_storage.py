"""A storage someone else wrote, fuzzed: Hypothesis mutates one stored attribute of a real tiny study
at a time (its type, a huge number, NaN, unicode, a line break, a path or an address planted
outside the study's folders, a Hydra node), on the study, a finished trial, a trial whose worker
died, or a trial waiting to run, and runs a command that reads the storage: resume, `export`,
`compare`, `--confirm`, the summary, and the dashboard's plots (a PBT lineage, its replay). Each
must exit 0 or 2 with at most one error line, and none may raise (a traceback), write a file
outside the study's folders, or connect to a loopback listener planted as an address.

The fast tier runs a short version; the full tier (`-m slow`) runs FULL_EXAMPLES."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from mhtrain import one_line_errors
from mhtrain.pbt import SCHEDULE
from mhtrain.study import cli, study_config
from mhtrain.study.__main__ import main as study_main
from mhtrain.study.ledger import owner
from mhtrain.study.local import trust
from mhtrain.study.records import StudyRecord, TrialRecord
from tests.conftest import ROOT, tiny_for
from tests.test_untrusted import Listener, copied, load_compare_cli, real_trials

FAST_EXAMPLES, FULL_EXAMPLES = 12, 40  # the full tier: about 4 s an example, every command
NAME = f"fuzz_{uuid.uuid4().hex[:6]}"  # conf/experiment/best_<NAME>.yaml is export's, removed each time
PBT = "pbt_loss_weights"  # the dashboard's lineage: named after its local study config
COMMANDS = ("resume", "export", "compare", "confirm", "summary", "plots")
STUDY_ATTRS = sorted({*StudyRecord.model_fields, "confirmation"})
TRIAL_ATTRS = sorted({*TrialRecord.model_fields, "best_val/digit_acc"})


@pytest.fixture(scope="module")
def base(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real tiny lr study (two one-epoch trials), stored once; each example copies it with
    Optuna's public API, one attribute mutated. Its compare re-runs are made when first needed."""
    root = tmp_path_factory.mktemp("fuzz_base")
    attrs, trials = real_trials(tiny_data, root, name=NAME)
    lr, thick = "model.optimizer.lr", "model.loss_weights.thickness"
    schedule = [{"epoch": 0, "parent": None, lr: 1e-3, thick: 1.0},
                {"epoch": 1, "parent": 0, "parent_epoch": 1, lr: 1.2e-3, thick: 0.8}]
    return {"attrs": attrs, "trials": trials, "typed": tiny_for(tiny_data, epochs=1), "schedule": schedule,
            "root": root}


def with_reruns(base: dict) -> None:
    """The real compare's re-runs of the study, stored with it (a compare then trains nothing)."""
    if "reruns" in base["attrs"]:
        return
    url, attrs = f"sqlite:///{base['root'] / 'base.db'}", base["attrs"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base["root"])
        for name in (NAME, f"{NAME}_ref"):
            copied(url, name, {**attrs, "config": {**attrs["config"], "name": name}}, base["trials"])
            trust(study_config.load("lr", name=name, extra_overrides=base["typed"]))
        assert load_compare_cli().main(["--arms", NAME, "--reference", f"{NAME}_ref", "--storage", url,
                                        "--seeds", "2", "data.train_subset=64", *base["typed"]]) == 0
        attrs["reruns"] = optuna.load_study(study_name=NAME, storage=url).user_attrs["reruns"]


def hostile(elsewhere: Path, port: int) -> st.SearchStrategy:
    """Values a storage may hold instead of the project's own: wrong types, huge and non-finite
    numbers, unicode and line breaks, paths and addresses outside the study, Hydra nodes. Every
    planted path resolves into `elsewhere`, every address is the listener's."""
    planted = st.sampled_from([
        str(elsewhere / "x"), "runs/../../elsewhere/x", "../elsewhere", f"sqlite:///{elsewhere}/other.db",
        f"file://{elsewhere}/mlruns", f"http://127.0.0.1:{port}", f"http://u:pw@127.0.0.1:{port}/api",
        f"postgresql://u:pw@127.0.0.1:{port}/db", "${oc.env:HOME}",
        "{_target_: os.system, _args_: [touch x]}",
        "lr\ntouch PWNED; exit 0 #", "trial_0000", "val/digit_acc", "seed=5000000000", "logger=mlflow",
        f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}", f"data.data_dir={elsewhere}", ""])
    huge = st.builds(lambda: 10**3999) | st.builds(lambda: "x" * 5000)  # built, so reports stay short
    numbers = st.integers(-(10**30), 10**30) | st.sampled_from([-1, 0, 2**32])
    leaves = (st.none() | st.booleans() | numbers | huge | st.floats(allow_nan=True, allow_infinity=True)
              | st.text(max_size=30) | planted)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8) | planted, inner, max_size=3), max_leaves=6)


def mutated(value: object, draw: st.DataObject, values: st.SearchStrategy) -> object:
    """`value` replaced, or (a mapping or list) one item of it replaced, deleted or added."""
    how = draw.draw(st.sampled_from(["replace", "inner", "inner"]), label="how")
    if how == "replace" or not isinstance(value, dict | list) or not value:
        return draw.draw(values, label="value")
    value = copy.deepcopy(value)
    keys = list(value) if isinstance(value, dict) else range(len(value))
    key = draw.draw(st.sampled_from(keys), label="item")
    item = value[key]
    value[key] = mutated(item, draw, values) if isinstance(item, dict | list) and item else draw.draw(values)
    return value


def build(url: str, base: dict, draw: st.DataObject, values: st.SearchStrategy, command: str) -> str:
    """The real study copied into `url` with a trial whose worker is gone and one waiting to run
    (a PBT copy for the plots), one stored attribute mutated; returns what was mutated."""
    if command == "compare":
        with_reruns(base)
    attrs, trials = copy.deepcopy(base["attrs"]), [copy.deepcopy(t) for t in base["trials"]]
    name = PBT if command == "plots" else NAME
    if name == PBT:
        study = study_config.load(PBT, extra_overrides=["trainer.max_epochs=4"])
        trust(study)  # its members' records keep the real trials' fixed overrides: said, not used
        attrs["config"] = {**study.to_dict(), "overrides": attrs["config"]["overrides"]}
        for t in trials:
            t.user_attrs[SCHEDULE] = copy.deepcopy(base["schedule"]) if t.number else base["schedule"][:1]
    else:
        attrs["config"] = {**attrs["config"], "name": name}
    ref = {**copy.deepcopy(base["attrs"]), "config": {**base["attrs"]["config"], "name": f"{NAME}_ref"}}
    gone = copy.deepcopy(trials[0])
    gone.state, gone.value, gone.values = TrialState.RUNNING, None, None
    gone.user_attrs.update(owner={**owner(), "started": "1"}, retries=0)  # this host, not this pid
    where = draw.draw(st.sampled_from(["study", "finished", "running", "waiting"]), label="where")
    fixed = {"model.optimizer.lr": 0.003}
    if where == "study":
        attr = draw.draw(st.sampled_from(STUDY_ATTRS), label="attribute")
        attrs[attr] = mutated(attrs.get(attr), draw, values)
    elif where == "waiting":
        attr, fixed = "fixed_params", mutated(fixed, draw, values)
    else:
        trial = trials[draw.draw(st.integers(0, len(trials) - 1))] if where == "finished" else gone
        attr = draw.draw(st.sampled_from(TRIAL_ATTRS), label="attribute")
        trial.user_attrs[attr] = mutated(trial.user_attrs.get(attr), draw, values)
    ostudy = copied(url, name, attrs, [*trials, gone])
    waiting = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": fixed})
    ostudy.add_trial(waiting)
    if name == NAME:
        copied(url, f"{NAME}_ref", ref, base["trials"])
    return f"{where} {attr}"


def run(command: str, url: str, typed: list[str]) -> int:
    """The command as a user types it, in this process: its exit code (an exception escapes)."""
    from mhtrain.study.dashboard_figures import study_lineage
    from mhtrain.study.replay import lineage
    from mhtrain.study.summary import summary

    resume = ["--study-name", NAME, "--storage", url, "--no-progress", "--n-trials", "2", *typed]
    if command == "resume":
        return cli.main("lr", "", resume)
    if command == "confirm":
        return cli.main("lr", "", [*resume, "--confirm", "2", "--confirm-seeds", "2"])
    if command == "export":
        return study_main(["export", NAME, "--config", "lr", "--storage", url, *typed])
    if command == "compare":
        for arm in (NAME, f"{NAME}_ref"):  # as each arm's own study command declared its config
            trust(study_config.load("lr", name=arm, extra_overrides=typed))
        return load_compare_cli().main(["--arms", NAME, "--reference", f"{NAME}_ref", "--storage", url,
                                        "--seeds", "2", "data.train_subset=64", *typed])
    if command == "summary":
        ostudy = optuna.load_study(study_name=NAME, storage=url)
        return one_line_errors(lambda: print(summary(ostudy, 1, url)))

    def plots() -> None:  # the lineage figure the dashboard shows, and the replay it draws
        ostudy = optuna.load_study(study_name=PBT, storage=url)
        study_lineage(ostudy)
        lineage(ostudy, ostudy.trials[1])

    return one_line_errors(plots)


def files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")} if root.exists() else set()


def fuzz(base: dict, data: st.DataObject, capfd: pytest.CaptureFixture, commands: tuple[str, ...]) -> None:
    listener = Listener()
    top = Path(tempfile.mkdtemp(prefix="fuzz_"))
    work, elsewhere = top / "work", top / "elsewhere"
    work.mkdir()
    exported = ROOT / "conf" / "experiment" / f"best_{NAME}.yaml"
    before = os.getcwd()
    try:
        os.chdir(work)
        values = hostile(elsewhere, listener.port)
        command = data.draw(st.sampled_from(commands), label="command")
        url = f"sqlite:///{work / 'shared.db'}"
        what = build(url, base, data, values, command)
        capfd.readouterr()
        code = run(command, url, base["typed"])
        out, err = capfd.readouterr()
        errors = [line for line in err.splitlines() if line.startswith("error")]
        assert "Traceback" not in err, (command, what, err[-3000:])
        assert code in (0, 2), (command, what, code, err[-2000:])
        assert len(errors) <= 1 and (code == 0 or len(errors) == 1), (command, what, errors)
        outside = sorted(p for p in files(top) if not p.startswith(str(work)))
        assert not outside, (command, what, "written outside the study's folders", outside)
    finally:
        os.chdir(before)
        exported.unlink(missing_ok=True)
        heard = listener.close()
        shutil.rmtree(top, ignore_errors=True)
    assert heard == 0, (command, what, "connected to the planted listener")


FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no explain phase: minutes here
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large])


@settings(max_examples=FAST_EXAMPLES, **FUZZ)
@given(data=st.data())
def test_a_fuzzed_storage_is_data_to_every_reader(base, data, capfd):
    """The short version: the readers that train nothing (not the race, not compare's first
    re-runs), FAST_EXAMPLES examples."""
    fuzz(base, data, capfd, tuple(c for c in COMMANDS if c not in ("confirm", "compare")))


@pytest.mark.slow
@settings(max_examples=FULL_EXAMPLES, **FUZZ)
@given(data=st.data())
def test_a_fuzzed_storage_is_data_to_every_command(base, data, capfd):
    """Every command that reads a storage, `--confirm`'s race included, FULL_EXAMPLES examples."""
    started = time.monotonic()
    fuzz(base, data, capfd, COMMANDS)
    base.setdefault("seconds", []).append(time.monotonic() - started)


def test_the_fuzz_mutates_every_attribute_the_project_stores():
    """The attributes fuzzed are the schema's: a record the project adds is fuzzed with it."""
    assert {"config", "output_root", "artifact_dir", "reruns", "warm_start"} <= set(STUDY_ATTRS)
    assert {"owner", "overrides", "seed", "tracking", "retries", "epochs", "seconds", "checkpoint",
            SCHEDULE} <= set(TRIAL_ATTRS)
    assert json.dumps(10**3999)  # the largest integer planted still goes into a storage
