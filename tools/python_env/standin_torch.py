#!/usr/bin/env python3
"""Stand-ins for the torch a PyTorch developer tests: the locked torch wheel installed three ways, no compiling.

    python3 tools/python_env/standin_torch.py KIND FOLDER     KIND: regular, editable or develop

makes FOLDER/venv, a virtual environment of the interpreter that runs it, with the CPU lock's packages, and
prints its interpreter's path. Its torch is
  regular    installed in site-packages, as `pip install torch` leaves it;
  editable   in FOLDER/checkout, installed with `pip install --no-build-isolation --no-deps -e`
             (PEP 660: a .pth and a finder), as a source build's editable install leaves it;
  develop    in FOLDER/checkout, found through `torch.egg-link` and a path in `easy-install.pth`:
             what `python setup.py develop` leaves (setuptools 80 and newer make it a PEP 660 install,
             so the two files are written here as the older command wrote them).
A checkout holds torch/ and torchgen/ as PyTorch's does, with a setup.py that packages them.
Used by tests/test_interpreter_torch.py and tools/python_env/interpreter_torch_benchmark.
"""

import atexit
import functools
import pathlib
import shutil
import subprocess
import sys
import tempfile

import install_lock  # beside this script, as locked_tool.py imports it

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The CPU lock of the Python the stand-in is for (one per Python; python's own version picks it).
CPU_LOCK = str(ROOT / "third_party" / "python" / "requirements_cpu_py{python}_lock.txt")
INSTALLER_LOCK = ROOT / "third_party" / "python" / "installer_lock.txt"
KINDS = ("regular", "editable", "develop")
# The packages a PyTorch checkout holds at its top, beside setup.py.
CHECKOUT_PACKAGES = ("torch", "torchgen")
SETUP_PY = """from setuptools import find_packages, setup

setup(name="torch", version="{version}",
      packages=find_packages(include=["torch", "torch.*", "torchgen", "torchgen.*"]),
      package_data={{"": ["*.so*", "lib/*", "bin/*"]}})
"""


def site_packages(venv: pathlib.Path) -> pathlib.Path:
    return next(venv.glob("lib/python3.*/site-packages"))


@functools.cache
def installer(python: str) -> str:
    """The locked installer (uv), installed once per process into a folder removed at exit."""
    folder = tempfile.mkdtemp(prefix="standin_torch_installer_")
    atexit.register(shutil.rmtree, folder, True)
    return install_lock.install_uv(python, folder, str(INSTALLER_LOCK))


def locked_venv(venv: pathlib.Path, python: str) -> pathlib.Path:
    """A virtual environment of python (no pip of its own) with every package of the CPU lock, torch included."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, env=install_lock.clean_environ())
    version = subprocess.run([python, "-E", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    lock = CPU_LOCK.format(python=version)
    subprocess.run([python, "-E", str(pathlib.Path(install_lock.__file__)), installer(python), lock,
                    str(site_packages(venv))], check=True, env=install_lock.clean_environ(), stdout=subprocess.DEVNULL)
    shutil.rmtree(site_packages(venv) / "bin", ignore_errors=True)
    return venv / "bin" / "python"


def move_torch_to_checkout(venv: pathlib.Path, checkout: pathlib.Path) -> None:
    """torch and torchgen out of the venv into a checkout folder; the venv keeps no torch distribution."""
    site = site_packages(venv)
    checkout.mkdir(parents=True)
    for package in CHECKOUT_PACKAGES:
        shutil.move(str(site / package), str(checkout / package))
    info = next(site.glob("torch-*.dist-info"))
    version = info.name[len("torch-"):-len(".dist-info")].split("+")[0]
    shutil.rmtree(info)
    (checkout / "setup.py").write_text(SETUP_PY.format(version=version))


def make(kind: str, folder: pathlib.Path, host_python: str = sys.executable) -> pathlib.Path:
    """The stand-in of that kind in folder, a virtual environment of host_python; returns its interpreter's path."""
    venv, checkout = folder / "venv", folder / "checkout"
    python = locked_venv(venv, host_python)
    if kind == "regular":
        return python
    move_torch_to_checkout(venv, checkout)
    if kind == "editable":
        # The host's pip installs into the venv (--python); the venv's setuptools (a torch dependency) builds.
        subprocess.run([host_python, "-m", "pip", "--python", str(python), "install", "--quiet",
                        "--disable-pip-version-check", "--no-build-isolation", "--no-deps", "--no-index",
                        "-e", str(checkout)],
                       check=True, env=install_lock.clean_environ())
        shutil.rmtree(checkout / "build", ignore_errors=True)
    elif kind == "develop":
        site = site_packages(venv)
        (site / "torch.egg-link").write_text(f"{checkout}\n.")
        (site / "easy-install.pth").write_text(f"{checkout}\n")
    else:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    return python


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in KINDS:
        sys.exit(__doc__)
    print(make(sys.argv[1], pathlib.Path(sys.argv[2]).resolve()))
