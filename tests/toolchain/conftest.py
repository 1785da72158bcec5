import shutil
import sys
from pathlib import Path

import pytest

from edgec.toolchain import cli


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `edgec ARGS` in-process through the real entry point; (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what the test's own setup printed
        monkeypatch.setattr(sys, "argv", ["edgec", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture
def vit_copy(tmp_path) -> Path:
    """A writable copy of the vit-digits model directory, to corrupt."""
    from edgec.toolchain.zoo import ZOO

    dst = tmp_path / "vit"
    shutil.copytree(ZOO["vit-digits"].locate(), dst)
    return dst


@pytest.fixture(scope="session")
def export_zoo():
    """Export zoo models through the real CLI entry point (call once per test module)."""
    return _export_zoo


def _export_zoo(root: Path, target: str, names: tuple[str, ...], recipe: dict) -> dict[str, Path]:
    import json

    import jsonschema

    from edgec.toolchain.manifest import schema

    recipe_file = root / "recipe.json"
    recipe_file.write_text(json.dumps(recipe))
    outs = {}
    for name in names:
        out = root / name
        sys.argv = ["edgec", "export", name, "--target", target, "-o", str(out), "--recipe", str(recipe_file), "-q"]
        try:
            cli.main()
        except SystemExit as e:
            assert not e.code, f"export of {name} for {target} failed"
        jsonschema.validate(json.loads((out / "manifest.json").read_text()), schema())
        outs[name] = out
    return outs

