"""The wheel holds one top-level name, `rusteeze`, and every package folder of the tree."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder → the package name it installs as (pyproject's package-dir mapping).
MAPPED = {"rusteeze": "rusteeze", "commands": "rusteeze/commands", "kernels": "rusteeze/kernels"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("rusteeze-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_only_top_level_name_is_rusteeze(wheel_names):
    tops = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"rusteeze"}


def test_every_package_folder_is_in_the_wheel(wheel_names):
    expected = set()
    for source, installed in MAPPED.items():
        for init in (ROOT / source).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / source).as_posix()
            expected.add(f"{installed}/{rel}/__init__.py".replace("/./", "/"))
    assert expected, "no packages found in the source tree"
    missing = sorted(expected - wheel_names)
    assert not missing, f"package folders missing from the wheel (add them to pyproject's packages): {missing}"


def test_console_script_is_declared(wheel, wheel_names):
    name = next(n for n in wheel_names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(name).decode()
    assert "rusteeze = rusteeze.commands.main:app" in text


def test_import_does_not_load_triton():
    code = "import sys, rusteeze, rusteeze.kernels; assert 'triton' not in sys.modules, 'triton imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_web_ui_files_are_in_the_wheel(wheel_names):
    web = ROOT / "rusteeze" / "server" / "web"
    expected = {f"rusteeze/server/web/{p.name}" for p in web.iterdir() if p.is_file()}
    assert "rusteeze/server/web/index.html" in expected
    missing = sorted(expected - wheel_names)
    assert not missing, f"web page files missing from the wheel (pyproject's package-data): {missing}"
