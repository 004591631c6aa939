"""Write docs/cifar10/airbench-progress.json from the airbench run's checkpoint: the per-epoch
history (validation accuracy with flip TTA, smoothed training loss, seconds) that the
checkpoint records, so the progress table in docs/results/cifar10.md can be rebuilt at any point. Once
the run has finished (the checkpoint is gone), the artifact's training log
(``<artifact>.log.json`` beside it) is read instead, with the test split's scores.

Usage: python scripts/airbench_progress.py [CHECKPOINT] [OUT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import safe_open

ckpt = Path(sys.argv[1] if len(sys.argv) > 1
            else "runs/airbench/cifar10-classifier.ckpt.safetensors")
out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/cifar10/airbench-progress.json")
final_log = ckpt.with_name(ckpt.name.replace(".ckpt.safetensors", ".log.json"))
if ckpt.exists():
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    extra = json.loads(meta["ebmctl.extra"])
    config = json.loads(meta["ebmctl.config"])
    history = extra["state"]["history"]
    source, scores = str(ckpt), {}
elif final_log.exists():
    log = json.loads(final_log.read_text())
    config, history, source = log["config"], log["history"], str(final_log)
    scores = {"test_accuracy": log.get("test"),
              "test_accuracy_single_view": log.get("test_accuracy_single_view")}
else:
    sys.exit(f"no checkpoint at {ckpt} and no finished run's log at {final_log}")
epochs = config.get("model", {}).get("epochs")
record = {"profile": "cifar10-airbench", "epochs_done": len(history), "epochs_total": epochs,
          "source": source, **scores, "history": history}
tmp = out.with_suffix(".tmp")
tmp.write_text(json.dumps(record, indent=2) + "\n")
tmp.replace(out)  # atomic: a reader never sees half a file
print(f"{out}: {len(history)} of {epochs} epochs")
