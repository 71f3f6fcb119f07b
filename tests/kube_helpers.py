"""Runs one task with a KubernetesExecutor in a process of its own, so the crash-resume test can SIGKILL it
mid-rollout: `python tests/kube_helpers.py KUBECONFIG NAMESPACE STATE_DB ROLLOUT_ID TASK_JSON`."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    from kubernetes import config

    from agents.kube import KubernetesExecutor
    from agents.planner import Task
    from agents.rollout_state import RolloutStore

    kubeconfig, namespace, db, rollout_id, task_json = argv
    api = config.new_client_from_config(config_file=kubeconfig)
    executor = KubernetesExecutor(
        api,
        namespace=namespace,
        rollout_id=rollout_id,
        state=RolloutStore(Path(db)),
        poll_seconds=0.1,
        timeout_seconds=60,
        sleep=time.sleep,
    )
    result = executor.run(Task.model_validate_json(task_json))
    print(result.model_dump_json())
    return 0 if result.status == "succeeded" else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main(sys.argv[1:]))
