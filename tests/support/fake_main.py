"""Stands in for ``python -m mcjax.main`` in the sweep's tests of its process handling.

Reads ``--workdir=`` and ``--config.seed=`` from its arguments, writes ``config.json``
and then, by ``FAKE_MAIN_MODE``: ``finish`` writes a ``summary.json`` and exits 0;
``wait`` writes ``started`` and waits for SIGTERM, then writes ``got_SIGTERM`` and
exits 75 (as a run that saved its checkpoint); ``fail`` exits 3.
"""

import json
import os
import signal
import sys
import time

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
workdir = args["--workdir"]
seed = int(args["--config.seed"])
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"seed": seed}, f)
mode = os.environ.get("FAKE_MAIN_MODE", "finish")
if mode == "finish":
    summary = {
        "test_accuracy": 0.5 + 0.1 * seed,
        "params_train": 1000,
        "params_test": 900,
        "steps": 1,
        "wall_seconds": 0.0,
        "live_blocks_per_module": [2, 4],
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f)
    sys.exit(0)
if mode == "fail":
    print("error: non-finite loss or gradient at step 1 (phase 1)", file=sys.stderr)
    sys.exit(3)


def _stop(signum, frame):
    open(os.path.join(workdir, f"got_{signal.Signals(signum).name}"), "w").close()
    print("preempted: stopped by SIGTERM after step 1", file=sys.stderr)
    sys.exit(75)


signal.signal(signal.SIGTERM, _stop)
open(os.path.join(workdir, "started"), "w").close()
time.sleep(120)
sys.exit(1)
