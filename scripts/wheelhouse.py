#!/usr/bin/env python3
"""Build a wheelhouse: ngt and every package it needs, as wheels, for a node without internet.

Run where there is internet (a login node, a laptop), carry the folder (or its .tar) over,
and install on the node beside the node's own torch:

    python scripts/wheelhouse.py --python 3.11 --platform manylinux_2_28_x86_64
    pip install --no-index --find-links build/wheelhouse-cp311-manylinux_2_28_x86_64 'ngt[hf]'

torch is left out, and with it everything only torch needs (nvidia-*, triton, sympy...): the
requirements are resolved from ngt's own metadata without torch, and a constraint that no
torch satisfies makes the build fail, rather than download a CUDA build, if any other
package asks for it. Test tools (the `dev` extra) are left out too. `--without PKG` leaves
out an extra's package (e.g. `--without datasets`: only data.source=hf needs it, and it
brings pyarrow); the install command then drops that extra.
"""

from __future__ import annotations

import argparse
import email.message
import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
except ImportError:  # every pip carries a copy of packaging
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
EXCLUDED = "torch"  # the node's own build, made for its CUDA
TEST_EXTRAS = {"dev"}
# A manylinux node with glibc 2.N takes every manylinux wheel up to 2.N; pip, given one tag,
# takes only that one. The legacy names stand for these glibc versions (PEP 600).
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# CUDA builds of current torch are manylinux_2_28 wheels: a node that runs one has glibc >= 2.28.
# (Not this machine's platform: the wheelhouse is often built on a laptop for a Linux cluster.)
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
WINDOWS_MACHINES = {"win32": "x86", "win_amd64": "AMD64", "win_arm64": "ARM64"}


def pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=capture, text=True)
    if proc.returncode != 0:
        detail = (proc.stdout or "") + (proc.stderr or "") if capture else ""
        sys.exit(f"{detail}\nerror: pip {args[0]} failed (exit status {proc.returncode})")
    return proc


# --- ngt itself ---------------------------------------------------------------------------

def source_files() -> list[str]:
    """What a build of this checkout may read: tracked files and new ones that git does not
    ignore (outputs/, build/ and caches stay behind)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit(f"error: {REPO} is not a git checkout: build the wheelhouse from one")
    return [f for f in listed.split("\0") if f and os.path.lexists(REPO / f)]  # a deleted file is still listed


def build_ngt_wheel(dest: Path) -> Path:
    """ngt as a wheel, built from a clean copy: setuptools reuses build/lib in the source tree,
    so a module deleted since an earlier build would otherwise still ship."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ngt-src"
        for rel in source_files():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel, follow_symlinks=False)  # conf/, sweeps/: links into ngt/
        pip("wheel", "-q", "--no-deps", "-w", str(dest), str(src))
    wheels = sorted(dest.glob("ngt-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"error: expected one ngt wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def wheel_metadata(wheel: Path) -> email.message.Message:
    """A wheel's METADATA: its requirements as pip will see them on the node."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode())


def check_python(meta: email.message.Message, python: str) -> None:
    wanted = SpecifierSet(meta.get("Requires-Python") or "")
    if not wanted.contains(f"{python}.0"):
        sys.exit(f"error: --python {python}: ngt needs Python {wanted}")


# --- what the node needs ------------------------------------------------------------------

def target_environment(python: str, platform_tag: str) -> dict[str, str]:
    """Marker values of the node, so that requirements with markers are judged for it."""
    if platform_tag.startswith(("manylinux", "musllinux", "linux")):
        system, sys_platform = "Linux", "linux"
    elif platform_tag.startswith("macosx"):
        system, sys_platform = "Darwin", "darwin"
    elif platform_tag.startswith("win"):
        system, sys_platform = "Windows", "win32"
    else:
        sys.exit(f"error: unknown platform tag {platform_tag!r} (e.g. manylinux_2_28_x86_64)")
    # manylinux2014_x86_64, manylinux_2_28_aarch64, macosx_11_0_arm64, linux_x86_64 -> the machine
    machine = WINDOWS_MACHINES.get(platform_tag) or re.sub(
        r"^(manylinux\d+|(manylinux|musllinux|macosx)_\d+_\d+|linux)_", "", platform_tag)
    env = dict(default_environment())
    env.update(python_version=python, python_full_version=f"{python}.0", platform_system=system,
               sys_platform=sys_platform, platform_machine=machine, implementation_name="cpython",
               platform_python_implementation="CPython")
    return env


def extra_names(r: Requirement) -> list[str]:
    return re.findall(r'extra == "([^"]+)"', str(r.marker)) if r.marker else []


def needed(reqs: list[Requirement], extras: set[str], env: dict[str, str]) -> list[str]:
    """ngt's requirements on the node with these extras, torch left out, markers resolved."""
    out = []
    for r in reqs:
        if canonicalize_name(r.name) in (EXCLUDED, "ngt"):  # "ngt": an extra made of other extras
            continue
        if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
            out.append(str(r).split(";")[0].strip())  # judged here: pip gets no marker to judge again
    return out


def choose_extras(reqs: list[Requirement], without: list[str]) -> set[str]:
    """Every runtime extra, less those that bring a package left out by --without."""
    core = {canonicalize_name(r.name) for r in reqs if not extra_names(r)}
    members: dict[str, set[str]] = {}
    for r in reqs:
        for e in set(extra_names(r)) - TEST_EXTRAS:
            members.setdefault(e, set()).add(canonicalize_name(r.name))
    extras = set(members)
    for pkg in map(canonicalize_name, without):
        if pkg in core:
            sys.exit(f"error: --without {pkg}: it is a core requirement of ngt ([project] dependencies in "
                     f"pyproject.toml); only a package of an extra can be left out")
        holders = {e for e, names in members.items() if pkg in names}
        if not holders:
            optional = sorted(set().union(*members.values())) or ["none"]
            sys.exit(f"error: --without {pkg}: no extra of ngt brings it (optional packages: {', '.join(optional)})")
        extras -= holders
    return extras


def platform_tags(tag: str) -> list[str]:
    """A manylinux tag and every older one a node with that glibc also runs."""
    legacy = re.fullmatch(r"(manylinux\d+)_(.+)", tag)
    if legacy and legacy.group(1) in LEGACY_MANYLINUX:
        (major, minor), arch = LEGACY_MANYLINUX[legacy.group(1)], legacy.group(2)
    elif m := re.fullmatch(r"manylinux_(\d+)_(\d+)_(.+)", tag):
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
    else:
        return [tag]
    tags = [f"manylinux_{major}_{n}_{arch}" for n in range(minor, 4, -1)]
    tags += [f"{name}_{arch}" for name, glibc in LEGACY_MANYLINUX.items() if glibc <= (major, minor)]
    return tags


# --- downloading --------------------------------------------------------------------------

def build_sdist_only(requirements: list[str], constraints: Path, dest: Path) -> None:
    """Wheels for the needed packages that PyPI has only as source (hydra's antlr4 runtime):
    resolved here, built here; each must come out pure Python to serve another machine."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "-q", "--dry-run", "--ignore-installed", "-c", str(constraints), "--report", str(report),
            *requirements, capture=True)
        items = json.loads(report.read_text())["install"]
    sources = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
               if not i["download_info"]["url"].endswith(".whl")]
    if not sources:
        return
    pip("wheel", "-q", "--no-deps", "-w", str(dest), *sources)
    for wheel in dest.glob("*.whl"):
        if not wheel.name.endswith("-none-any.whl"):
            sys.exit(f"error: {wheel.name}: built from source for this machine only; the node needs a wheel of its own")


def download(requirements: list[str], python: str, platforms: list[str], constraints: Path,
             built: Path, dest: Path) -> None:
    abi = "cp" + python.replace(".", "")
    pip("download", "-q", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
        "--abi", abi, *[a for p in platforms for a in ("--platform", p)], "-c", str(constraints),
        "--find-links", str(built), "-d", str(dest), *requirements, capture=True)


# --- output -------------------------------------------------------------------------------

def fresh_folder(out: Path) -> None:
    """Empty the output folder, refusing one that holds anything but wheels (a mistyped --out)."""
    if out.exists():
        strangers = [p.name for p in out.iterdir() if p.suffix != ".whl"]
        if strangers:
            sys.exit(f"error: {out} holds more than wheels ({', '.join(strangers[:3])}); choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def write_tar(out: Path) -> Path:
    tar = out.with_name(out.name + ".tar")
    with tarfile.open(tar, "w") as tf:  # wheels are zip files already: compressing again gains nothing
        tf.add(out, arcname=out.name)
    return tar


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def print_summary(out: Path, tar: Path | None, extras: set[str]) -> None:
    wheels = sorted(out.glob("*.whl"), key=lambda w: w.stat().st_size, reverse=True)
    total = sum(w.stat().st_size for w in wheels)
    print(f"wheelhouse: {out}  ({len(wheels)} wheels, {megabytes(total)})")
    if tar is not None:
        print(f"tar:        {tar}  ({megabytes(tar.stat().st_size)})")
    print("largest:    " + ", ".join(f"{w.name.split('-')[0]} {megabytes(w.stat().st_size)}" for w in wheels[:5]))
    target = f"'ngt[{','.join(sorted(extras))}]'" if extras else "ngt"
    print(f"on the node, beside its torch:\n  pip install --no-index --find-links {out} {target}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build a wheelhouse of ngt and its dependencies, torch excluded, "
                                            "for installing on a machine without internet.")
    p.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="the node's Python version, e.g. 3.11 (default: this one's)")
    p.add_argument("--platform", default=DEFAULT_PLATFORM,
                   help=f"the node's platform tag, e.g. manylinux2014_x86_64 (default: {DEFAULT_PLATFORM}); "
                        "a manylinux tag takes the older manylinux wheels too")
    p.add_argument("--without", action="append", default=[], metavar="PKG",
                   help="leave out an optional package and the extra that brings it (e.g. datasets); repeatable")
    p.add_argument("--out", type=Path, help="the folder to write (default: build/wheelhouse-<python>-<platform>)")
    p.add_argument("--no-tar", action="store_true", help="write only the folder, not also a .tar beside it")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        p.error(f"--python {args.python}: give a version such as 3.11")
    tag = "cp" + args.python.replace(".", "")
    out = (args.out or REPO / "build" / f"wheelhouse-{tag}-{args.platform}").resolve()
    fresh_folder(out)

    wheel = build_ngt_wheel(out)
    meta = wheel_metadata(wheel)
    check_python(meta, args.python)
    reqs = [Requirement(line) for line in meta.get_all("Requires-Dist") or []]
    extras = choose_extras(reqs, args.without)
    requirements = needed(reqs, extras, target_environment(args.python, args.platform))
    with tempfile.TemporaryDirectory() as tmp:
        constraints, built = Path(tmp) / "constraints.txt", Path(tmp) / "built"
        # No torch version is below 0: a package that needs torch fails the build here instead
        # of pulling a multi-GB CUDA build (and its nvidia-* wheels) into the bundle.
        constraints.write_text(f"{EXCLUDED}<0\n")
        built.mkdir()
        build_sdist_only(requirements, constraints, built)
        download(requirements, args.python, platform_tags(args.platform), constraints, built, out)
    tar = None if args.no_tar else write_tar(out)
    print_summary(out, tar, extras)
    return 0


if __name__ == "__main__":
    sys.exit(main())
