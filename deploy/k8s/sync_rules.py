"""Write base/prometheusrule.yaml from deploy/observability/rules/*.yml (one source of the rules).

Run after editing a rule file: `python deploy/k8s/sync_rules.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "observability" / "rules"
TARGET = HERE / "base" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from deploy/observability/rules/*.yml by `python deploy/k8s/sync_rules.py`;\n"
    "# tests/unit/test_deploy_k8s.py fails when the two differ. Edit the rule files, not this.\n"
)


def prometheus_rule() -> dict[str, Any]:
    groups = [group for path in sorted(RULES.glob("*.yml")) for group in yaml.safe_load(path.read_text())["groups"]]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "matteserve", "labels": {"app.kubernetes.io/part-of": "matteserve"}},
        "spec": {"groups": groups},
    }


def main() -> None:
    TARGET.write_text(HEADER + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=110))


if __name__ == "__main__":
    main()
