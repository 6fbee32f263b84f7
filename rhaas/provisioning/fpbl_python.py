"""The Python inside the FPBL: Debian's interpreter, the agent's modules and the stdlib modules it uses.

The interpreter is ``python3.11`` from ``python3.11-minimal``; its standard library comes from
``libpython3.11-minimal`` and ``libpython3.11-stdlib``. Which stdlib modules: the agent is imported *and
exercised* (HTTP and HTTPS to a pinned certificate, JSON, SHA-256, subprocess, cpio, disk code) by the
Debian interpreter itself at build time, and every stdlib module it then has loaded is shipped, with the
libraries of its extension modules (OpenSSL's, for ``ssl`` and ``hashlib``: the agent authenticates its
server by TLS, and OpenSSL's SHA-256 is about three times the built-in one's speed). A static import
closure (``modulefinder``) would ship 294 modules (8 MB of source) for the ~100 really used. The agent's
modules are every module of `rhaas.agent` (the package is the agent: nothing else goes there). Everything
is compiled to ``.pyc`` by that interpreter.

This module prepares files for the FPBL builder (`rhaas.provisioning.fpbl`); it writes no archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rhaas.imaging import ImageBuildError, cache
from rhaas.imaging.debs import Package, fetch_unpacked
from rhaas.imaging.elf import LOADER, LibraryResolver
from rhaas.provisioning import agenttls

PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib")
PYTHON = "python3.11"
#: Where the compiled modules go in the FPBL.
STDLIB_DIR = "usr/lib/python3.11"
AGENT_DIR = "usr/lib/rhaas-agent"
#: Loaded by the exercise but not wanted in the FPBL (none today).
EXCLUDED: frozenset[str] = frozenset()
#: Extension modules whose libraries must be found before the exercise can import them (OpenSSL's).
PRELOADED = ("_ssl", "_hashlib")
#: Libraries the stdlib's extension modules link to that its package does not declare (``_ssl`` and
#: ``_hashlib`` need OpenSSL; Debian's python3.11 leaves that to ``libssl3`` being installed anyway).
UNDECLARED = ("libssl3",)
#: Codecs the interpreter may pick at start-up in another locale.
EXTRA_STDLIB = ("encodings.ascii", "encodings.latin_1", "encodings.utf_8")
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _agent_modules() -> tuple[str, ...]:
    agent = _REPO_ROOT / "rhaas" / "agent"
    # Subpackages too (rhaas.agent.fs): a package is its __init__ module.
    names = sorted(
        ".".join(p.relative_to(agent).with_suffix("").parts).removesuffix(".__init__")
        for p in agent.rglob("*.py")
        if p != agent / "__init__.py"
    )
    return ("rhaas", "rhaas.agent", *(f"rhaas.agent.{name}" for name in names))


#: The agent's own modules, shipped under /usr/lib/rhaas-agent: the package and every module in it.
AGENT_MODULES = _agent_modules()

#: Run by the Debian interpreter at build time: import the agent, exercise it, print what got loaded.
EXERCISE = r"""
import json, os, sys
src, work, keyfile, pin = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sys.path.insert(0, src)
from rhaas.agent import agent, api, bootentry, cpio, disk, kexec, memory, settings, system, work as works
import io, runpy, socket, threading  # runpy: the init starts the agent with -m

body = b'{"action": "wait", "poll_after": 1}'
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4)
def serve():
    import ssl
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(keyfile)
    for n in range(4):
        conn, _ = srv.accept()
        if n == 3:  # the agent's HTTPS call, to a pinned server
            conn = tls.wrap_socket(conn, server_side=True)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        conn.close()
threading.Thread(target=serve, daemon=True).start()
url = "http://127.0.0.1:%d" % srv.getsockname()[1]
conf = settings.parse_cmdline("console=ttyS0 rhaas.agent=%s rhaas.node=n rhaas.secret=s rhaas.ip=10.0.0.2/24"
                              % url)
node_api = api.Api(conf)
works.parse_work(node_api.call("GET", "work"))
node_api.call("POST", "report", {"x": 1})
got = []
import hashlib
try:
    node_api.download(works.Artifact("/f", hashlib.sha256(body).hexdigest(), len(body)), got.append,
                      lambda d, t: None)
except works.AgentError as exc:
    str(exc)
try:
    bad = settings.parse_cmdline("rhaas.agent=http://127.0.0.1:1 rhaas.node=n rhaas.secret=s")
    api.Api(bad).call("GET", "w")
except OSError as exc:
    str(exc)
secure = settings.parse_cmdline("rhaas.agent=https%s rhaas.node=n rhaas.secret=s rhaas.pin=%s"
                                % (url[4:], pin))
works.parse_work(api.Api(secure).call("GET", "work"))
system.run(["true", "x"])
path = os.path.join(work, "disk")
with open(path, "wb") as f:
    f.truncate(4 << 20)
w = disk.ImageWriter(path, 4 << 20, 2 << 20)
w.write(b"x" * 1000 + bytes(2 << 20))
w.finish()
d = disk.Disk("vda", path, 4 << 20)
disk.verify_zero(path, disk.wipe(d, "metadata").regions)
disk.wipe(d, "discard")
mem = os.path.join(work, "mem")
with open(mem, "wb") as f:
    f.truncate(8 << 20)
own = memory.system_ram("00100000-001fffff : System RAM")
memory.scrub_physical(memory.foreign_ranges([memory.Range(0, 8 << 20)], own), mem)
memory.scrub_free(memory.SPARE + (1 << 20))
ranges = kexec.parse_memmap("0-9fc00u,100000-3ffe0000u,3ffe0000-40000000r")
kexec.exactmap_params(ranges); kexec.customer_cmdline("console=ttyS0 -- x"); kexec.inherited_args("a b=c")
kexec.write_memmap_dir(os.path.join(work, "sys", "firmware", "memmap"), ranges)
kexec.read_firmware_memmap(os.path.join(work, "sys"))
archive = cpio.CpioWriter(io.BytesIO()); archive.file("a", b"b"); archive.close()
from rhaas.agent import coldplug
table = coldplug.make_table({"m": (["pci:v00001AF4d*sv*sd*bc*sc*i*"], [])})
coldplug.coldplug(table, lambda: {"pci:v00001AF4d00001000sv1sd1bc1sc1i0"} | coldplug.read_modaliases(work),
                  lambda name: None, coldplug.loaded_modules(os.path.join(work, "modules")))
from rhaas.agent import swarm, wire
blob = b"chunk" * 100
whole = swarm.Chunk(0, len(blob), hashlib.sha256(blob).hexdigest())
exchange = swarm.Exchange([swarm.Extent(whole, (whole,))], lambda c, sink: sink(blob) or whole.sha256, None,
                          "127.0.0.1")
out = os.open(os.path.join(work, "swarm"), os.O_RDWR | os.O_CREAT)
exchange.deliver(out, os.path.join(work, "swarm"))
with wire.request("GET", "127.0.0.1", exchange.port, "/pieces?want=1", {"X-Swarm": exchange.token},
                  timeout=5) as answer:
    assert answer.read() == blob
exchange.close(linger=0); exchange.stats(); os.close(out)
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sorted(sys.modules.items())}))
"""

_COMPILE = r"""
import json, py_compile, sys
for src, dst, shown in json.load(sys.stdin):
    py_compile.compile(src, cfile=dst, dfile=shown, doraise=True, optimize=2,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""

#: What the build's result depends on besides the package versions and the agent's source.
SCRIPTS_DIGEST = hashlib.sha256((EXERCISE + _COMPILE).encode()).hexdigest()


@dataclass(frozen=True)
class DebianPython:
    """Debian's interpreter, unpacked and runnable on this host, with what the FPBL needs of it."""

    #: The three packages merged into one tree (``usr/bin/python3.11``, ``usr/lib/python3.11``).
    root: Path
    #: How to run it here: its own loader and libraries, and its environment.
    command: list[str]
    env: dict[str, str]
    #: soname -> (package, file) of the interpreter's libraries and of the extension modules'.
    libs: dict[str, tuple[str, Path]]
    #: (package, file) of the dynamic loader.
    loader: tuple[str, Path]
    #: module -> file of every stdlib module the agent uses.
    modules: dict[str, Path]

    @property
    def binary(self) -> Path:
        return self.root / "usr/bin" / PYTHON


def prepare_python(cache_root: Path, versions: dict[str, str], resolver: LibraryResolver) -> DebianPython:
    """Unpack Debian's Python, find its libraries, and find what of its stdlib the agent uses."""
    root = _merged_python(cache_root, versions)
    for name in (*PYTHON_PACKAGES, *UNDECLARED):
        resolver.add(name)
    libs = resolver.resolve(PYTHON_PACKAGES[0], [root / "usr/bin" / PYTHON])
    loader = resolver.find(LOADER)
    if loader is None:
        raise ImageBuildError(f"no package fetched holds {LOADER}")
    dynload = root / STDLIB_DIR / "lib-dynload"
    preloaded = [p for name in PRELOADED for p in dynload.glob(f"{name}.cpython-*.so")]
    libs = {**libs, **resolver.resolve(PYTHON_PACKAGES[2], preloaded)}
    libdirs = sorted({p.parent for _, p in [*libs.values(), loader]})
    command, env = _python_env(root, libdirs)
    modules = used_stdlib(command, env, root / STDLIB_DIR)
    extensions = [p for p in modules.values() if p.suffix == ".so"]
    if extensions:
        libs = {**libs, **resolver.resolve(PYTHON_PACKAGES[2], extensions)}
    return DebianPython(root, command, env, libs, loader, modules)


def _python_env(pyroot: Path, libdirs: Sequence[Path]) -> tuple[list[str], dict[str, str]]:
    """How to run the unpacked Debian interpreter on this host, with its own loader and libraries."""
    loader = next(p for p in (d / LOADER for d in libdirs) if p.exists())
    cmd = [str(loader), "--library-path", ":".join(str(d) for d in libdirs), str(pyroot / "usr/bin" / PYTHON)]
    env = {"PYTHONHOME": str(pyroot / "usr"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    return cmd, env


def _merged_python(cache_root: Path, versions: dict[str, str]) -> Path:
    """The three Python packages unpacked into one tree, so that the interpreter finds its stdlib."""
    roots = [fetch_unpacked(Package(n, versions[n]), cache_root) for n in PYTHON_PACKAGES]
    key = hashlib.sha256(json.dumps([versions[n] for n in PYTHON_PACKAGES]).encode()).hexdigest()[:16]
    merged = cache_root / "python" / key
    with cache.locked(merged):
        if not (merged / "root" / "usr/bin" / PYTHON).is_file():
            tmp = merged / "tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            for root in roots:
                shutil.copytree(root, tmp, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(merged / "root", ignore_errors=True)
            tmp.rename(merged / "root")
    return merged / "root"


def used_stdlib(python: list[str], env: dict[str, str], stdlib: Path) -> dict[str, Path]:
    """module -> file of every stdlib module the agent loads when exercised (see `EXERCISE`)."""
    with tempfile.TemporaryDirectory(prefix="rhaas-fpbl-") as work:
        script = Path(work) / "exercise.py"
        script.write_text(EXERCISE)
        key = Path(work) / "exercise-tls.pem"  # a throwaway key: the exercise's own HTTPS server
        pin = agenttls.ensure_key(key)
        done = subprocess.run(
            [*python, "-S", "-X", "frozen_modules=off", str(script), str(_REPO_ROOT), work, str(key), pin],
            capture_output=True, text=True, env=env, check=False, timeout=120,
        )  # fmt: skip
    if done.returncode != 0:
        raise ImageBuildError(
            f"exercising the agent in Debian's Python failed: {done.stderr.strip()[-2000:]}"
        )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    out = {}
    for name, file in loaded.items():
        if not file or name.split(".")[0] in EXCLUDED:
            continue
        path, rel = Path(file), name.replace(".", "/")
        # Only a module's own file: os.path is posixpath, _frozen_importlib is importlib._bootstrap.
        if (
            path in (stdlib / f"{rel}.py", stdlib / rel / "__init__.py")
            or path.parent == stdlib / "lib-dynload"
        ):
            out[name] = path
    for name in EXTRA_STDLIB:
        out[name] = stdlib / (name.replace(".", "/") + ".py")
    return out


def agent_sources() -> dict[str, Path]:
    """module -> source file of each of `AGENT_MODULES`."""
    out = {}
    for name in AGENT_MODULES:
        path = _REPO_ROOT / name.replace(".", "/")
        out[name] = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return out


def compiled_files(python: DebianPython) -> list[tuple[str, bytes, int]]:
    """(path in the FPBL, bytes, permissions) of the stdlib's extension modules and of every module
    compiled: the stdlib modules the agent uses, and the agent's own."""
    files: list[tuple[str, bytes, int]] = []
    jobs: list[tuple[Path, str]] = []
    for name, src in sorted(python.modules.items()):
        if src.suffix == ".so":
            files.append((f"{STDLIB_DIR}/lib-dynload/{src.name}", src.read_bytes(), 0o755))
        else:
            jobs.append((src, _pyc_dest(STDLIB_DIR, name, src)))
    for name, src in agent_sources().items():
        jobs.append((src, _pyc_dest(AGENT_DIR, name, src)))
    with tempfile.TemporaryDirectory(prefix="rhaas-pyc-") as tmp:
        compile_modules(python.command, python.env, jobs, Path(tmp))
        files += [(dest, (Path(tmp) / dest).read_bytes(), 0o644) for _, dest in jobs]
    return files


def compile_modules(python: list[str], env: dict[str, str], jobs: list[tuple[Path, str]], out: Path) -> None:
    """Compile each (source, initrd path of the .pyc) with the Debian interpreter: hash-based .pyc files
    (no source mtime inside: reproducible), docstrings and asserts stripped (``optimize=2``)."""
    todo = []
    for src, dest in jobs:
        (out / dest).parent.mkdir(parents=True, exist_ok=True)
        todo.append([str(src), str(out / dest), "/" + dest.removesuffix("c")])
    done = subprocess.run(
        [*python, "-S", "-c", _COMPILE], input=json.dumps(todo), capture_output=True, text=True, env=env,
        check=False, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise ImageBuildError(f"compiling the agent's modules failed: {done.stderr.strip()[-2000:]}")


def _pyc_dest(base: str, name: str, src: Path) -> str:
    rel = name.replace(".", "/") + ("/__init__" if src.name == "__init__.py" else "")
    return f"{base}/{rel}.pyc"
