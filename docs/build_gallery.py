"""Draw docs/images/schedule_<name>.png for every built-in scheduler (run from the repo root).

``.venv/bin/python docs/build_gallery.py``; tests check that every built-in weight scheduler and
decay curve has its picture and that this script runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import prunekit as pk
from prunekit.plotting import plot_schedules

OUT = Path(__file__).resolve().parent / "images"


def build(out: Path = OUT) -> list[Path]:
    written = [
        plot_schedules(
            {"oneshot at step 20, target 0.8": (pk.get_scheduler({"type": "oneshot", "start_step": 20}), 0.8)},
            out / "schedule_oneshot.png",
            title="oneshot",
        )
    ]
    curves = {
        f"decay: {name}": (pk.get_scheduler({"type": "iterative", "end_step": 100, "frequency": 10, "decay": name}), 0.9)
        for name in pk.DECAY_CURVES.names()
    }
    written.append(plot_schedules(curves, out / "schedule_iterative.png", title="iterative, 0 -> 100 every 10, target 0.9"))
    return written


if __name__ == "__main__":
    for path in build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(f"wrote {path}")
