"""A bundle read back through its manifest alone, as an app reads it: `edgec run`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgec import runtimes
from edgec.errors import InputError
from edgec.exporters.artifact import sha256
from edgec.tasks import Task, task_named
from edgec.toolchain.golden import golden_samples, read_golden
from edgec.toolchain.manifest import validate


@dataclass
class Bundle:
    root: Path
    manifest: dict
    task: Task

    def artifact(self, runtime: str | None) -> tuple[dict, str]:
        """The first artifact verified on `runtime` (default: the first artifact on its own runtime)."""
        arts = self.manifest["artifacts"]
        if runtime is None:
            return arts[0], arts[0]["runtime"]
        for a in arts:
            if runtime in a["verified_on"]:
                return a, runtime
        offered = sorted({rt for a in arts for rt in a["verified_on"]})
        raise InputError(f"no artifact in {self.root} is verified on '{runtime}': choose one of {', '.join(offered)}")

    def session(self, art: dict, runtime: str) -> runtimes.Session:
        session = runtimes.load(runtime, self.root / art["path"])
        _check_export(art, getattr(session, "export_id", None), self.root)
        return session


def open_bundle(root: Path) -> Bundle:
    """The bundle at `root`, refused with one line when its manifest or any file it names is broken."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise InputError(f"{root} is no edgec bundle (no manifest.json): give the folder `edgec export -o` wrote")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}): re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path} is not a JSON object: re-export the bundle")
    validate(manifest)
    for art in manifest["artifacts"]:
        _check_file(root, art)
        if "golden" in art and not (root / art["golden"]["path"]).is_file():
            raise InputError(f"{root / art['golden']['path']} is missing: re-export the bundle")
    if "tokenizer" in manifest and not (root / manifest["tokenizer"]["path"]).is_file():
        raise InputError(f"{root / manifest['tokenizer']['path']} is missing: re-export the bundle")
    return Bundle(root, manifest, task_named(manifest["task"]))


def _check_file(root: Path, art: dict) -> None:
    f = root / art["path"]
    extra = art.get("external_data", [])
    for e in [{"path": art["path"]}, *extra]:
        if not (root / e["path"]).is_file():
            raise InputError(f"{root / e['path']} is missing: re-export the bundle")
    for e in extra:
        if (root / e["path"]).stat().st_size != e["bytes"] or sha256(root / e["path"]) != e["sha256"]:
            raise InputError(f"{root / e['path']} does not match its manifest entry (size or sha256): the file is "
                             "truncated or changed; re-export the bundle")
    if f.stat().st_size + sum(e["bytes"] for e in extra) != art["bytes"] or sha256(f) != art["sha256"]:
        raise InputError(f"{f} does not match its manifest entry (size or sha256): the file is truncated or "
                         "changed; re-export the bundle")


def _check_export(art: dict, export_id: str | None, root: Path) -> None:
    """A module carries the id of the export it came from: one from another export is refused, even
    with a manifest entry edited to match its bytes."""
    expected = art.get("gpu", {}).get("export")
    if expected and export_id != expected:
        raise InputError(f"{root / art['path']} comes from another export ({export_id}, this bundle is "
                         f"{expected}): re-export the bundle")


def check_golden(bundle: Bundle, art: dict, runtime: str) -> list[tuple[str, bool]]:
    """Each golden input through `art` on `runtime`, compared with the output edgec recorded there."""
    if runtime not in art["golden"]["runtimes"]:
        raise InputError(f"{art['path']} has no golden outputs for '{runtime}' "
                         f"(it has {', '.join(art['golden']['runtimes'])})")
    arrays = read_golden(bundle.root / art["golden"]["path"])
    session = bundle.session(art, runtime)
    samples = golden_samples(arrays, runtime, [t["name"] for t in art["inputs"]], [t["name"] for t in art["outputs"]])
    return [bundle.task.agreement(expected, session.run(feed), feed, bundle.manifest) for feed, expected in samples]
