"""The cluster recipes in docs/recipes are valid for the tools that read them, and run real attnbench commands."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from harness.cli import parser
from harness.running.grid import resolve_path

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"


def _attnbench_commands(shell: str) -> list[list[str]]:
    """The argument lists of every `attnbench ...` command in a shell line joined by `&&`."""
    commands = []
    for part in shell.split("&&"):
        words = shlex.split(part)
        if words and words[0] == "attnbench":
            commands.append(words[1:])
    return commands


def _check_run_command(argv: list[str]) -> None:
    args = parser().parse_args(argv)  # SystemExit on an unknown flag or verb
    if args.verb == "run":
        assert resolve_path(args.grid).exists()
        assert args.address == "auto"
        assert str(args.checkpoints).startswith("/shared/")  # storage every node mounts


def test_cluster_launcher_recipe_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RECIPES / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    # The head drives the grid only: trials must not be scheduled on it.
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


def test_cluster_launcher_schema_check_can_fail():
    from jsonschema.exceptions import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RECIPES / "ray-cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["resources"] = {"GPU": "eight"}
    with pytest.raises(ValidationError):
        validate_config(prepare_config(config))


def test_kuberay_rayjob_runs_a_shipped_grid_and_writes_the_report_to_shared_storage():
    job, claim = list(yaml.safe_load_all((RECIPES / "kuberay-rayjob.yaml").read_text()))
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    commands = _attnbench_commands(job["spec"]["entrypoint"])
    assert [argv[0] for argv in commands] == ["run", "report"]
    for argv in commands:
        _check_run_command(argv)
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    for pod in pods:  # every pod mounts the claim at /shared
        (volume,) = pod["spec"]["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert {"name": volume["name"], "mountPath": "/shared"} in pod["spec"]["containers"][0]["volumeMounts"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_cluster_page_commands_parse():
    page = (Path(__file__).resolve().parents[2] / "docs" / "clusters.md").read_text()
    quoted = [line.split("'")[1] for line in page.splitlines() if "'attnbench " in line]
    assert quoted
    for shell in quoted:
        for argv in _attnbench_commands(shell):
            _check_run_command(argv)
