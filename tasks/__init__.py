"""Task plugins. ``names()`` lists them, ``build(name, scale=..., seed=...)`` constructs one."""

from tasks.base import (
    BOS_ID,
    PAD_ID,
    Batch,
    ModelSize,
    Task,
    TaskSpec,
    build,
    check_params,
    get,
    names,
    parameters,
    register_task,
)

__all__ = [
    "BOS_ID",
    "PAD_ID",
    "Batch",
    "ModelSize",
    "Task",
    "TaskSpec",
    "build",
    "check_params",
    "get",
    "names",
    "parameters",
    "register_task",
]
