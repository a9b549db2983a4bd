"""Attention plugins. ``names()`` lists them, ``build(name, **params)`` constructs one."""

from attentions.base import (
    Attention,
    build,
    check_params,
    get,
    load_plugin_dir,
    names,
    parameters,
    register_attention,
)

__all__ = [
    "Attention",
    "build",
    "check_params",
    "get",
    "load_plugin_dir",
    "names",
    "parameters",
    "register_attention",
]
