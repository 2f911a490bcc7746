"""The end of a worker's part in its study: the study's report (leaderboard, Optuna's plots) on
its MLflow parent run, its best trial to the winner file, a multi-objective study's compact pick
to the registry, and the parent run ended once no trial of the study runs or waits."""

from __future__ import annotations

import logging

import optuna

from mlp.errors import UserError, first_line
from mlp.sweep import front, protocol, report
from mlp.sweep.export import WinnerKept, register_compact, update_winner
from mlp.sweep.kill_points import reach
from mlp.sweep.settings import Plan
from mlp.sweep.study import Joined

log = logging.getLogger(__name__)
RUNNING, WAITING = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING


def finish(joined: Joined, plan: Plan, status: str) -> None:
    """Report, update the winner file, end the parent run with ``status`` (FINISHED, FAILED,
    KILLED): KILLED when interrupted here too, FAILED when this step fails. A sweep that finished
    without any complete trial is one clear error."""
    try:
        best = report_and_export(joined, plan)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED" if status == "FINISHED" else status
        raise
    finally:
        end_parent(joined, status)
    if status == "FINISHED" and best is None:
        states = [t.state.name for t in joined.study.get_trials(deepcopy=False)]
        raise UserError(
            f"no trial of study {plan.study_name!r} completed ({states.count('FAIL')} failed, "
            f"{states.count('PRUNED')} pruned): there is no best trial; see each trial's {protocol.FAILURE} "
            "in MLflow, then run more trials (hydra.sweeper.n_trials) or a gentler pruner"
        )


def report_and_export(joined: Joined, plan: Plan) -> optuna.trial.FrozenTrial | None:
    """The study's report on its parent run, and its best trial to the winner file; the best trial."""
    study, client, parent_id = joined.study, joined.client, joined.parent_id
    try:
        report.report(study, client, parent_id)
    except Exception as e:  # noqa: BLE001 - a report that cannot be drawn must not lose the winner below
        log.warning("the study's report (leaderboard, plots) was not logged: %s", first_line(e))
    reach("report")
    best = front.most_accurate(study)
    if best is not None and plan.winner_file is not None:
        try:
            update_winner(study, best, client, parent_id, plan.winner_file, plan.replace_winner)
        except WinnerKept as kept:
            log.warning("%s", kept)
            client.set_tag(parent_id, protocol.PARENT_WINNER_KEPT, kept.tag)
    if front.several(study) and plan.registered_model is not None:
        register_compact_pick(joined, plan.compact_within, plan.registered_model)
    return best


def register_compact_pick(joined: Joined, within: float, model_name: str) -> None:
    """A multi-objective study's compact pick (mlp.sweep.front) under the alias compact."""
    if (pick := front.compact_pick(joined.study, within)) is None:
        return
    try:
        done = register_compact(joined.study, pick, joined.client, within, model_name)
        log.info("compact pick: trial %d (%s)", pick.number, done.summary())
    except UserError as e:
        log.warning("compact pick: trial %d not registered: %s", pick.number, e)


def end_parent(joined: Joined, status: str) -> None:
    """End the study's parent run with ``status`` unless a trial of the study still runs or
    waits (another worker's: that worker ends it)."""
    try:
        busy = len(joined.study.get_trials(deepcopy=False, states=(RUNNING, WAITING)))
    except Exception as e:  # noqa: BLE001 - the storage is gone: the parent must not stay RUNNING
        log.warning("the study's trials could not be counted (%s): its parent run ends %s", first_line(e), status)
        busy = 0
    if not busy:
        try:
            joined.client.set_terminated(joined.parent_id, status)
        except Exception as e:  # noqa: BLE001 - the tracking store is gone: say so, keep the error under way
            log.warning("MLflow parent run %s not ended %s: %s", joined.parent_id, status, first_line(e))
