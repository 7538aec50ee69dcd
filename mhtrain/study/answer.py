"""What a finished search hands the researcher, printed and stored on the study's first page in
optuna-dashboard: a PBT answer's schedule and lineage, then (with `--confirm K`) the race of the
top K and the default on fresh seeds, its figure, its entry in the study's ledger of analyses,
and the study's note (the race's verdict first)."""

from __future__ import annotations

import optuna
from optuna_dashboard import save_note

from mhtrain.study import confirm
from mhtrain.study.analyses import record_race
from mhtrain.study.dashboard_figures import note, store_figure, store_lineage
from mhtrain.study.records import StudyConfig
from mhtrain.study.replay import pbt_lines
from mhtrain.study.untrusted import study_metric


def answer(ostudy: optuna.Study, study: StudyConfig, k: int, cap: int, delta: float) -> None:
    """Print and store the answer; `k` = 0 runs no race (none asked, or the search stopped early)."""
    notes = []
    if study.pbt is not None:  # the lineage figure to the dashboard, the best schedule here and there
        store_lineage(ostudy)
        print(schedule := pbt_lines(ostudy, study))
        notes.append(f"The answer is a schedule:\n\n```\n{schedule}\n```")
    if k:
        metric = study_metric(ostudy)
        verdict = confirm.confirm(ostudy, k, cap, delta)
        print("\n".join(verdict.lines(metric)))
        store_figure(ostudy, verdict)
        record_race(ostudy, verdict, metric)
        notes.insert(0, note(verdict, metric))
    if notes:
        save_note(ostudy, "\n\n".join(notes))
