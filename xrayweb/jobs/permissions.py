"""The permissions staff actions need, each granted through one group that a data
migration creates (jobs/migrations/0004_h17_groups.py). Being staff is not enough:
staff see the staff pages; what they may start or change is these permissions."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied

START_TRAINING = "training.start_training"
START_EVALUATION = "training.start_evaluation"
RUN_IMPORT = "cases.run_import"
CANCEL_ANY_JOB = "jobs.cancel_any_job"
ACTIVATE_MODEL = "generations.activate_modelversion"

GROUPS = {
    "trainers": (START_TRAINING, START_EVALUATION),
    "data stewards": (RUN_IMPORT,),
    "operators": (CANCEL_ANY_JOB, ACTIVATE_MODEL),
}
NOT_PERMITTED = (
    "You may not {action}: that needs the permission {perm!r}, which the "
    "{group!r} group grants. Ask an administrator."
)


def group_of(perm: str) -> str:
    return next(name for name, perms in GROUPS.items() if perm in perms)


def require(user: AbstractBaseUser | None, perm: str, action: str) -> None:
    """PermissionDenied naming the permission and its group, unless ``user`` has
    ``perm``. None is an operator on the command line, who may do anything."""
    if user is not None and not user.has_perm(perm):
        raise PermissionDenied(
            NOT_PERMITTED.format(action=action, perm=perm, group=group_of(perm))
        )
