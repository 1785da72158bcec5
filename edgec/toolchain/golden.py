"""Golden vectors: a few inputs with the outputs each artifact gave on each runtime it was verified on.

An app, or a native runner, checks itself against them with no Python: one
`.npz` per artifact, keys `input/<name>` and `output/<runtime>/<name>`, stacked
over the samples (row i of every array is sample i), plus `text` for text models.
The members are stored, not deflated, so a native app reads them with no zlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgec.exporters.artifact import Artifact
from edgec.tasks.base import Feeds

FOLDER = "golden"


def write_golden(work: Path, art: Artifact, feeds: Feeds, session: Callable, output_names: list[str]) -> dict:
    """Run the golden inputs on every runtime of `art`; the manifest's entry for the file written."""
    arrays = {f"input/{name}": np.concatenate([f[name] for f in feeds.golden]) for name in feeds.golden[0]}
    for rt in art.runtimes:
        run = session(art, rt)
        outs = [run(f) for f in feeds.golden]
        for i, name in enumerate(output_names):
            arrays[f"output/{rt}/{name}"] = np.concatenate([o[i] for o in outs])
    for name, value in (feeds.golden_extra or {}).items():
        arrays[name] = value
    (work / FOLDER).mkdir(exist_ok=True)
    path = work / FOLDER / f"{art.path.name}.npz"
    save_golden(path, arrays)
    return {"path": f"{FOLDER}/{path.name}", "samples": len(feeds.golden), "runtimes": list(art.runtimes)}


def save_golden(path: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **arrays)


def read_golden(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def golden_samples(arrays: dict[str, np.ndarray], runtime: str, input_names: list[str],
                   output_names: list[str]) -> list[tuple[dict, list]]:
    """(feed, expected outputs) per sample for `runtime`."""
    n = len(arrays[f"input/{input_names[0]}"])
    return [({name: arrays[f"input/{name}"][i:i + 1] for name in input_names},
             [arrays[f"output/{runtime}/{name}"][i:i + 1] for name in output_names]) for i in range(n)]
