"""A pytest plugin for gpu_check's kernel tests (loaded with ``-p gpu_check_plugin``).

* maps a checkout that is not installed onto the ``rusteeze`` package names (in xdist workers too);
* tags every parametrized case with the name of its torch dtype (test ids only say ``dtype2``);
* appends each outcome to the JSON-lines file named by ``GPU_CHECK_RESULTS`` as it comes, from the
  controlling process only, so a run killed at its time limit still leaves what it finished.
"""

from __future__ import annotations

import json
import os

from gpu_check import map_checkout_packages

map_checkout_packages()
_config = None


def pytest_configure(config) -> None:
    global _config
    _config = config


def pytest_collection_modifyitems(items) -> None:
    import torch

    for item in items:
        callspec = getattr(item, "callspec", None)
        dtypes = [v for v in (callspec.params.values() if callspec else ()) if isinstance(v, torch.dtype)]
        if dtypes:
            item.user_properties.append(("dtype", str(dtypes[0]).removeprefix("torch.")))


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("GPU_CHECK_RESULTS")
    if not path or (_config is not None and hasattr(_config, "workerinput")):  # an xdist worker: the controller writes
        return
    if report.when == "call":
        outcome = report.outcome
    elif report.outcome == "skipped":
        outcome = "skipped"
    elif report.outcome == "failed":
        outcome = "error"  # setup or teardown failed
    else:
        return
    dtype = dict(report.user_properties).get("dtype")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": report.nodeid, "outcome": outcome, "dtype": dtype}) + "\n")
