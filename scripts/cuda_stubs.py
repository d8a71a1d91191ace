"""Make PyPI's CUDA build of torch load on a CPU-only image: stub libraries for the CUDA libraries it links.

    python cuda_stubs.py TORCH_LIB_DIR     (needs readelf and gcc; run in the image's build stage)

Why: the optimizer image runs onnxruntime-genai's model builder, which needs torch, and PyPI's only Linux
x86_64 torch is the CUDA build (the CPU build lives on download.pytorch.org, which this project's
machines cannot reach). Its shared libraries name cuBLAS, cuDNN, cuFFT, cuSPARSE(Lt), NCCL, NVRTC and
NVSHMEM as DT_NEEDED, so they must exist for `import torch` to succeed, although a CPU never calls them;
installed for real they add about 2.8 GB to the image. The small ones that CPU code does use are
installed for real (cudart, which answers "no device"; cupti, for the profiler; cufile): see
scripts/image_requirements.py.

For every library that torch's libraries need and that is not installed, this writes a stub with the
same soname that defines every symbol torch references from it, with the same symbol version (NVIDIA
versions symbols by soname). A stub function returns 1, the libraries' "not initialized"/"not supported"
status; nothing reaches them on a CPU, where torch asks cudart for devices, finds none, and never
initializes CUDA. tests/images/test_images.py runs the builder in the image.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Never stubbed: the GPU driver comes from the node (a GPU node mounts it), and cudart looks it up by
# soname to learn whether there is a GPU: a stub of it would answer for a driver that is not there. Only
# libcaffe2_nvrtc.so (torch's NVRTC JIT, opened on first use on a GPU) names it.
DRIVER = "libcuda.so.1"
SYSTEM_LIBRARY_DIRS = (Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu"), Path("/lib64"))
# Which stub gets an unversioned reference (cuSPARSELt and NVSHMEM do not version their symbols).
PREFIXES = {"cusparseLt": "libcusparseLt", "nccl": "libnccl", "nvshmem": "libnvshmem", "cudnn": "libcudnn"}
SYMBOL = re.compile(r"^\s*\d+:\s+\S+\s+\d+\s+(FUNC|OBJECT|NOTYPE)\s+(GLOBAL|WEAK)\s+\S+\s+(\S+)\s+(\S+)")


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def needed(library: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", str(library)))


def rpath_dirs(library: Path) -> list[Path]:
    found = re.search(
        r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[([^\]]*)\]", readelf("-d", str(library))
    )
    if found is None:
        return []
    return [
        Path(entry.replace("$ORIGIN", str(library.parent))) for entry in found.group(1).split(":") if entry
    ]


def symbols(library: Path) -> tuple[list[tuple[str, str, str | None]], set[str]]:
    """(undefined (type, name, version)) and the names it defines, from its dynamic symbol table."""
    undefined: list[tuple[str, str, str | None]] = []
    defined: set[str] = set()
    for line in readelf("--dyn-syms", str(library)).splitlines():
        match = SYMBOL.match(line)
        if match is None:
            continue
        kind, _, section, raw = match.groups()
        name, _, version = raw.partition("@")
        version = version.lstrip("@").split(" ")[0] or None
        if section == "UND":
            undefined.append((kind, name, version))
        else:
            defined.add(name)
    return undefined, defined


def version_owners(library: Path) -> dict[str, str]:
    """Symbol version name -> the soname that must define it, from the library's version needs."""
    owners: dict[str, str] = {}
    soname = None
    for line in readelf("-V", str(library)).splitlines():
        file_entry = re.search(r"File: (\S+)", line)
        if file_entry is not None:
            soname = file_entry.group(1)
            continue
        name_entry = re.search(r"Name: (\S+)", line)
        if name_entry is not None and soname is not None:
            owners[name_entry.group(1)] = soname
    return owners


def find(soname: str, dirs: list[Path]) -> Path | None:
    for directory in [*dirs, *SYSTEM_LIBRARY_DIRS]:
        if (directory / soname).exists():
            return directory / soname
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    torch_lib = Path(argv[0])
    libraries = sorted(p for p in torch_lib.glob("*.so*") if p.is_file() and not p.is_symlink())
    missing: dict[str, list[Path]] = collections.defaultdict(list)
    present: dict[str, Path] = {}
    for library in libraries:
        for soname in needed(library):
            path = find(soname, rpath_dirs(library))
            if path is not None:
                present[soname] = path
            elif soname != DRIVER:
                missing[soname].append(library)
    if not missing:
        print("every library torch needs is installed: no stubs")
        return 0
    defined: set[str] = set()
    for path in {*libraries, *present.values()}:
        defined |= symbols(path)[1]
    wanted: dict[str, dict[str, tuple[str, str | None]]] = {soname: {} for soname in missing}
    for library in libraries:
        undefined, _ = symbols(library)
        owners = version_owners(library)
        for kind, name, version in undefined:
            owner_of_version = owners.get(version or "")
            if owner_of_version in wanted:
                wanted[owner_of_version][name] = (kind, version)
            elif version is None and name not in defined:
                owner = next(
                    (
                        soname
                        for prefix, stem in PREFIXES.items()
                        if name.startswith(prefix)
                        for soname in missing
                        if soname.startswith(stem)
                    ),
                    None,
                )
                if owner is not None:
                    wanted[owner][name] = (kind, None)
    with tempfile.TemporaryDirectory() as scratch:
        for soname, names in sorted(wanted.items()):
            source = Path(scratch) / f"{soname}.c"
            script = Path(scratch) / f"{soname}.map"
            lines = [
                f"/* stub of {soname}: see scripts/cuda_stubs.py */",
                "int ferry_cuda_stub(void) { return 1; }",
            ]
            for name, (kind, _) in sorted(names.items()):
                lines.append(f"char {name}[64];" if kind == "OBJECT" else f"int {name}(void) {{ return 1; }}")
            source.write_text("\n".join(lines) + "\n")
            # One version node per symbol version; unversioned symbols go to the first (or the soname's).
            nodes: dict[str, list[str]] = collections.defaultdict(list)
            first = min((v for _, v in names.values() if v is not None), default=soname)
            nodes[first].append("ferry_cuda_stub")
            for name, (_, version) in sorted(names.items()):
                nodes[version or first].append(name)
            script.write_text(
                "".join(
                    f"{node} {{\n  global:\n" + "".join(f"    {n};\n" for n in members) + "  local: *;\n};\n"
                    for node, members in nodes.items()
                )
            )
            subprocess.run(
                [
                    "gcc",
                    "-shared",
                    "-fPIC",
                    "-O0",
                    "-w",
                    f"-Wl,-soname,{soname}",
                    f"-Wl,--version-script={script}",
                    "-o",
                    str(torch_lib / soname),
                    str(source),
                ],
                check=True,
            )
            users = ", ".join(p.name for p in missing[soname])
            print(f"stub {soname}: {len(names)} symbols (needed by {users})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
