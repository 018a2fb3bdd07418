"""`make build` for both architectures, checked as Lambda would load it: every native extension in the
layer and the functions is built for the stack's Architecture (ELF e_machine), every module ships
the runtime's bytecode, the chat function re-ships nothing the layer has, and on this machine's
architecture both functions start from a read-only layer without compiling anything.

Each architecture is built once per session (module-scoped fixture), in a SAM workspace of its own
(.aws-sam/<arch>/: build folder, cache index and dependency cache), so a rerun is quick."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from bench.coldstart import ENTRIES, HOST_ARCH, UVICORN_CLI, artifacts, build, deployed, probe, strip_bytecode

# ELF e_machine values (System V ABI, elf.h): EM_X86_64 = 62, EM_AARCH64 = 183
E_MACHINE = {"x86_64": 62, "arm64": 183}
# PEP 552: flags bit 0 = hash-based, bit 1 = check_source; 0b01 is "unchecked hash"
UNCHECKED_HASH = 0b01
# Python 3.12's bytecode magic number (importlib/_bootstrap_external.py: MAGIC_NUMBER, 3531)
MAGIC_312 = (3531).to_bytes(2, "little") + b"\r\n"
# one build per architecture can take minutes on a loaded machine
BUILD_TIMEOUT = pytest.mark.timeout(900)


@pytest.fixture(scope="module", params=["arm64", "x86_64"])
def built(request) -> tuple[str, Path]:
    arch = request.param
    return arch, build(arch)  # into .aws-sam/<arch>/build, with that architecture's own SAM cache


def native_libraries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and (p.name.endswith(".so") or ".so." in p.name)]


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert header[4] == 2 and header[5] == 1, f"{path} is not 64-bit little-endian"
    return int(struct.unpack_from("<H", header, 18)[0])


@BUILD_TIMEOUT
def test_every_native_extension_matches_the_architecture(built):
    arch, build_dir = built
    found = artifacts(build_dir)
    assert {kind for _, kind in found.values()} == {"function", "layer"}
    libraries = [lib for folder, _ in found.values() for lib in native_libraries(folder)]
    wrong = {str(lib.relative_to(build_dir)): elf_machine(lib) for lib in libraries}
    wrong = {lib: machine for lib, machine in wrong.items() if machine != E_MACHINE[arch]}
    assert not wrong, f"built for another architecture than {arch}: {wrong}"
    names = {lib.name.split(".")[0] for lib in libraries}
    # the compiled wheels the layer depends on are there (so the check above is not vacuous)
    assert {"_pydantic_core", "orjson"} <= names, names


@BUILD_TIMEOUT
def test_the_built_layer_declares_its_architecture(built):
    from cfnlint.decode import decode  # type: ignore[import-untyped]

    arch, build_dir = built
    template, errors = decode(str(build_dir / "template.yaml"))
    assert not errors
    # SAM resolved the parameter at build time; CloudFormation resolves CompatibleArchitectures at deploy
    assert template["Resources"]["SharedLayer"]["Metadata"]["BuildArchitecture"] == arch


@BUILD_TIMEOUT
def test_every_module_ships_unchecked_python312_bytecode(built):
    _, build_dir = built
    sources = [py for folder, _ in artifacts(build_dir).values() for py in folder.rglob("*.py")]
    assert len(sources) > 1000
    missing, stale = [], []
    for py in sources:
        pyc = py.parent / "__pycache__" / f"{py.stem}.cpython-312.pyc"
        if not pyc.is_file():
            missing.append(str(py))
            continue
        header = pyc.read_bytes()[:8]
        if header[:4] != MAGIC_312 or struct.unpack_from("<I", header, 4)[0] != UNCHECKED_HASH:
            stale.append(str(pyc))
    assert not missing, missing[:5]
    assert not stale, stale[:5]


@BUILD_TIMEOUT
def test_the_chat_function_reships_nothing_the_layer_has(built):
    _, build_dir = built
    found = artifacts(build_dir)
    chat = {p.name for p in found["ChatFunction"][0].iterdir()}
    assert chat == {"chat", "run.sh", "requirements.txt"}, chat
    layer = {p.name for p in (found["SharedLayer"][0] / "python").iterdir()}
    assert {"fastapi", "uvicorn", "starlette", "pydantic", "rag_shared"} <= layer


@BUILD_TIMEOUT
def test_functions_start_from_a_read_only_layer_without_compiling(built):
    arch, build_dir = built
    if arch != HOST_ARCH:
        pytest.skip(f"{arch} extensions cannot load on this {HOST_ARCH} machine (checked by ELF header above)")
    with deployed(build_dir) as deployment:
        for function, code in ENTRIES.items():
            # importable the way Lambda (and run.sh) lay it out, and nothing compiled from source
            result = probe(deployment, function, code)
            assert result.compiled == [], f"{function} compiled {result.compiled[:5]}"
        # opensearch-py and boto3 load on first use, not at start (each ~0.1-0.3 s of a cold start)
        lazy = "import sys\nheavy = {'opensearchpy', 'boto3'} & set(sys.modules)\nassert not heavy, heavy"
        for function, code in ENTRIES.items():
            probe(deployment, function, f"{code}\n{lazy}")  # fails (CalledProcessError) if either loaded
        # nor uvicorn's command line (click) or pydantic-settings: run.sh's `python -m chat` builds the
        # server without it, the settings read the environment themselves, httpx's CLI is not tried
        unused = (
            "import sys\nextra = {'click', 'pydantic_settings', 'uvicorn.main'} & set(sys.modules)\nassert not extra"
        )
        for function, code in ENTRIES.items():
            probe(deployment, function, f"{code}\n{unused}")
        with pytest.raises(subprocess.CalledProcessError, match="exit status 1"):  # control: uvicorn's CLI
            probe(deployment, "ChatFunction", f"{UVICORN_CLI}\n{unused}")
        # nor pydantic.v1, which FastAPI imports only to reject v1 models (chat/__main__.py)
        no_v1 = "import sys\nassert sys.modules['pydantic.v1'] is None"
        probe(deployment, "ChatFunction", f"{ENTRIES['ChatFunction']}\n{no_v1}")
        # control: the first use loads them (the same check fails after it)
        first_use = "import indexer.handler\nfrom rag_shared.store import VectorStore\nimport boto3\n"
        with pytest.raises(subprocess.CalledProcessError, match="exit status 1"):
            probe(deployment, "IndexerFunction", first_use + lazy)
        # the chat function's web stack comes from the layer, not from the function
        code = "import fastapi, uvicorn\nassert all('/opt/python/' in m.__file__ for m in (fastapi, uvicorn))"
        where = probe(deployment, "ChatFunction", code)  # fails (CalledProcessError) if not from /opt
        assert where.compiled == []
        # control: without the shipped bytecode the same start compiles hundreds of modules, every time
        strip_bytecode(deployment)
        result = probe(deployment, "ChatFunction", ENTRIES["ChatFunction"])
        assert len(result.compiled) > 100
        assert any("/opt/python/uvicorn/" in p for p in result.compiled)
        assert any("/task/ChatFunction/chat/" in p for p in result.compiled)
