"""Run model-written Python programs in an OS-level sandbox (bubblewrap), never in the calling process.

Each program runs as ``sys.executable -E -s -B main.py`` (the caller's interpreter; with the cleared
environment and an empty ``HOME`` this is ``-I``'s isolation, and the script's folder stays first on
``sys.path`` so that ``files`` can be imported) inside ``bwrap`` with:

- namespaces: no network (a private, unconfigured loopback), a private PID namespace whose init is killed when
  the program ends or runs out of time (the kernel then kills every process left in it, detached daemons
  included), private IPC and hostname, a new session (no terminal), ``--die-with-parent``;
- files: ``/usr``, ``/lib*``, ``/bin``, ``/sbin``, ``/etc/ld.so.cache`` and the interpreter's prefixes
  (its stdlib and site-packages) read-only; a fresh size-bounded tmpfs as ``/tmp``, which is also the
  working directory and holds ``main.py`` and ``files``; a private ``/proc``, a minimal ``/dev`` and its own
  ``/dev/shm``; nothing of the host is writable and no other host path is visible;
- a non-root user: as root, privileged ``bwrap`` (no user namespace) hands over to ``setpriv``, which
  switches to an unprivileged host uid of its own (``HOST_UID_BASE`` + a slot per concurrent run) with no
  capabilities; as any other user, a user namespace maps uid 65534 to the caller and forbids nested ones;
- limits (``prlimit``, set inside the sandbox): address space ``memory_mb``, CPU time ``timeout_s`` + 1 s,
  ``MAX_PROCESSES`` processes, ``SCRATCH_MB`` per file, ``MAX_OPEN_FILES`` descriptors, no core files; at
  most ``OUTPUT_LIMIT_BYTES`` read per stream; a wall-clock ``timeout_s``;
- a seccomp filter (``_seccomp_filter``): no new namespaces, mounts, ptrace, bpf, io_uring, keyrings...;
- the environment cleared (``PATH``, ``HOME=/tmp``, ``LANG=C.UTF-8``, ``TMPDIR``, one BLAS/OpenMP thread).

Without a working ``bwrap`` every run raises ``SandboxUnavailable`` (``check_sandbox()`` says why and what to
do) unless the caller opts in to the weak ``rlimit`` mode (``D1_SANDBOX=rlimit``): limits, a fresh
folder and a cleared environment only, announced by a warning. docs/sandbox.md lists what is guaranteed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import re
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

BWRAP = "bwrap"
"""The bubblewrap executable (a name looked up on PATH, or a path); tests point it elsewhere."""
MODE_ENV = "D1_SANDBOX"
"""Environment variable choosing the mode: unset or ``bwrap`` (the sandbox), ``rlimit`` (weak, opt-in)."""
OUTPUT_LIMIT_BYTES = 1 << 20  # per stream; more and the program is killed (status "output_limit")
MAX_PROCESSES = 16  # processes and threads of one program (RLIMIT_NPROC; each may use memory_mb)
MAX_OPEN_FILES = 256  # RLIMIT_NOFILE
SCRATCH_MB = 64  # size of the /tmp tmpfs (main.py and files included) and of any one file written
HOST_UID_BASE = 2_000_000_000  # as root: the sandboxes' host uids, above systemd's container ranges
_SLOTS_PER_PROCESS = 256  # distinct host uids per calling process (pid-dependent block of HOST_UID_BASE)
_SANDBOX_UID = 65534  # the uid seen inside a user namespace (non-root callers): "nobody"
_WORKDIR = "/tmp"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": _WORKDIR, "LANG": "C.UTF-8", "TMPDIR": _WORKDIR,
    # one thread per BLAS/OpenMP pool: threads count as processes, and one program gets about one CPU
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}  # fmt: skip
_PYTHON_FLAGS = ("-E", "-s", "-B")  # no PYTHON* variables, no user site, no .pyc files
_NAMESPACES = (
    "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
    "--hostname", "sandbox", "--die-with-parent", "--new-session",
)  # fmt: skip
_BWRAP_VERSION = (0, 8)  # --disable-userns; --size for tmpfs
# System calls refused inside the sandbox (EPERM): new namespaces, mounts, tracing other processes, kernel
# interfaces that unprivileged programs rarely need and exploits often use. Numbers from the kernel's
# unistd headers (asm/unistd_64.h for x86_64, asm-generic/unistd.h for aarch64); (audit arch, numbers).
_DENIED = (
    "unshare setns mount umount2 pivot_root open_tree move_mount fsopen fsmount fspick mount_setattr ptrace "
    "process_vm_readv process_vm_writev bpf perf_event_open userfaultfd keyctl add_key request_key "
    "io_uring_setup io_uring_enter io_uring_register kexec_load kexec_file_load init_module finit_module "
    "delete_module open_by_handle_at name_to_handle_at clone clone3"
).split()
_SYSCALLS = {
    "x86_64": (0xC000003E, [272, 308, 165, 166, 155, 428, 429, 430, 432, 433, 442, 101, 310, 311, 321, 298, 323,
                            250, 248, 249, 425, 426, 427, 246, 320, 175, 313, 176, 304, 303, 56, 435]),
    "aarch64": (0xC00000B7, [97, 268, 40, 39, 41, 428, 429, 430, 432, 433, 442, 117, 270, 271, 280, 241, 282,
                             219, 217, 218, 425, 426, 427, 104, 294, 105, 273, 106, 265, 264, 220, 435]),
}  # fmt: skip
_NEW_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_KILL_GRACE_S = 5.0  # after a kill: how long to wait for the sandbox to be gone
_EXIT_GRACE_S = 0.2  # after the launched process ended: how long its pipes are still read
_POLL_S = 0.05  # how often the launched process is checked while its pipes stay open
_WHAT_TO_DO = (
    "What to do: install bubblewrap (Debian/Ubuntu `apt-get install bubblewrap`, RHEL/Fedora `dnf install "
    "bubblewrap`) on a kernel that allows user namespaces (`sysctl user.max_user_namespaces` > 0; Debian's "
    "`kernel.unprivileged_userns_clone=1`; Ubuntu 24.04's `kernel.apparmor_restrict_unprivileged_userns=0` "
    "or an AppArmor profile for bwrap), or ask the cluster's admins for it. Where that is impossible, run the "
    f"job inside Apptainer/Singularity with `--containall` (and `--net --network none`) and set {MODE_ENV}=rlimit "
    "there to accept the weak mode: limits only, the model's code then shares the job's user, files and network "
    "(docs/sandbox.md)."
)


class SandboxUnavailable(RuntimeError):
    """The OS sandbox cannot run here and the weak rlimit mode was not chosen: no code is run."""


@dataclass(frozen=True)
class RunResult:
    """How one program ended.

    ``status``: ``"ok"`` exit 0; ``"error"`` a non-zero exit (an uncaught exception, ``sys.exit(n)``);
    ``"timeout"`` the wall-clock ``timeout_s`` or the CPU-time limit was reached and the program was killed;
    ``"memory"`` it died of ``MemoryError`` at the address-space limit (a C library failing to allocate may
    instead crash: ``"killed"``); ``"output_limit"`` stdout or stderr went past ``OUTPUT_LIMIT_BYTES`` and the
    program was killed (the stream is cut there); ``"killed"`` it ended on any other signal. ``returncode``:
    the exit status, or minus the signal's number (an exit status above 128 reads as a signal, as in a
    shell). ``elapsed_s``: wall time from launch to the end of the sandbox, start-up included.
    """

    status: str
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def passed(self) -> bool:
        """Whether the program exited with status 0 within every limit."""
        return self.status == "ok"


@dataclass(frozen=True)
class Program:
    """One program for ``run_programs``: its source, its stdin and extra files for its working directory."""

    source: str
    stdin: str = ""
    files: Mapping[str, str] | None = None


def run_program(
    source: str, *, stdin: str = "", timeout_s: float = 10.0, memory_mb: int = 1024,
    files: dict[str, str] | None = None,
) -> RunResult:  # fmt: skip
    """Run ``source`` as a Python 3 program in the sandbox, with ``stdin`` and ``files`` (relative path ->
    text) written beside it in its fresh working directory; raises ``SandboxUnavailable`` when it cannot."""
    contents = _check_run(source, stdin, timeout_s, memory_mb, files or {})
    weak = _mode() == "rlimit"
    if weak:
        _warn_weak_mode()
    else:
        problem = check_sandbox()
        if problem:
            raise SandboxUnavailable(problem)
    with _memfd("stdin", stdin.encode()) as stdin_fd:
        if weak:
            return _run_weak(contents, stdin_fd, timeout_s, memory_mb)
        return _run_bwrap(contents, stdin_fd, timeout_s, memory_mb)


def run_programs(
    programs: Sequence[Program | str], *, workers: int | None = None, timeout_s: float = 10.0,
    memory_mb: int = 1024,
) -> list[RunResult]:  # fmt: skip
    """``run_program`` for each program (a ``Program`` or a source string), ``workers`` at a time (default:
    the CPUs this process may use), results in the programs' order."""
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    if workers < 1:
        raise ValueError(f"workers={workers}: must be at least 1 (the number of programs run at once)")
    items = [Program(p) if isinstance(p, str) else p for p in programs]
    if not items:
        return []

    def one(program: Program) -> RunResult:
        files = dict(program.files) if program.files else None
        return run_program(
            program.source, stdin=program.stdin, timeout_s=timeout_s, memory_mb=memory_mb, files=files
        )

    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="d1-sandbox") as pool:
        return list(pool.map(one, items))


def check_sandbox() -> str | None:
    """None when the bubblewrap sandbox works here; otherwise why not and what to do (a probe program is run
    once per ``BWRAP`` setting and the answer kept)."""
    with _CHECK_LOCK:
        if BWRAP not in _CHECKED:
            _CHECKED[BWRAP] = _probe()
        return _CHECKED[BWRAP]


_CHECKED: dict[str, str | None] = {}
_CHECK_LOCK = threading.Lock()
_WARNED: list[bool] = []  # non-empty once the weak mode's warning was given


def _probe() -> str | None:
    """Run a tiny program in the sandbox and say what failed, if anything."""
    missing = [tool for tool in _tools() if shutil.which(tool) is None]
    if missing:
        return f"the code sandbox needs {', '.join(missing)}: not found (PATH is searched). {_WHAT_TO_DO}"
    version = subprocess.run([BWRAP, "--version"], capture_output=True, text=True).stdout.split()[-1:]
    if tuple(int(n) for n in re.findall(r"\d+", "".join(version))[:2]) < _BWRAP_VERSION:
        return (
            f"{BWRAP} is bubblewrap {''.join(version) or '(version unknown)'}; the sandbox needs "
            f"{'.'.join(map(str, _BWRAP_VERSION))} or newer (--size, --disable-userns). {_WHAT_TO_DO}"
        )
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as error:
        return (
            f"the code sandbox needs pidfds (Linux 5.3 or newer, Python 3.9 or newer): {error}. {_WHAT_TO_DO}"
        )
    code = "import os, sys\nprint(os.getuid(), os.getgid())\nprint(repr((sys.prefix, sys.version)))\n"
    with _memfd("stdin", b"") as stdin_fd:
        result = _run_bwrap({"main.py": code}, stdin_fd, timeout_s=60.0, memory_mb=512)
    lines = result.stdout.splitlines()
    ids = lines[0].split() if lines else []
    ids_ok = "0" not in ids if os.geteuid() == 0 else ids == [str(_SANDBOX_UID)] * 2
    if result.status != "ok" or not ids_ok or lines[1:] != [repr((sys.prefix, sys.version))]:
        detail = (result.stderr.strip() or result.stdout.strip() or f"status {result.status}")[-2000:]
        return (
            f"bubblewrap ({BWRAP}) could not run a test program as expected (a non-root user, this "
            f"interpreter {sys.executable}): {detail}\n{_WHAT_TO_DO}"
        )
    return None


def _tools() -> list[str]:
    """Executables the sandbox runs: bwrap, prlimit and, as root, setpriv (both from util-linux)."""
    return [BWRAP, "prlimit"] + (["setpriv"] if os.geteuid() == 0 else [])


def _mode() -> str:
    """The mode chosen by ``D1_SANDBOX``."""
    mode = os.environ.get(MODE_ENV, "bwrap") or "bwrap"
    if mode not in ("bwrap", "rlimit"):
        raise ValueError(
            f"{MODE_ENV}={mode!r}: must be 'bwrap' (the OS sandbox, the default) or 'rlimit' (limits only, "
            "no isolation; only where bubblewrap cannot run)"
        )
    return mode


def _warn_weak_mode() -> None:
    """Say once, loudly and on stderr (not through ``warnings``, which filters may silence), that
    model-written code is not isolated."""
    with _CHECK_LOCK:
        if _WARNED:
            return
        _WARNED.append(True)
    line = "!" * 100
    print(
        f"{line}\nWARNING {MODE_ENV}=rlimit: model-written code runs WITHOUT the OS sandbox, with resource limits "
        f"only.\nIt can read your files, use the network and outlive its run. Use it only inside a container "
        f"that isolates this job (docs/sandbox.md).\n{line}",
        file=sys.stderr,
        flush=True,
    )


def _check_run(
    source: str, stdin: str, timeout_s: float, memory_mb: int, files: Mapping[str, str]
) -> dict[str, str]:
    """The working directory's files (``main.py`` first), after checking every argument."""
    if not isinstance(source, str):
        raise TypeError(f"source: a {type(source).__name__}; pass the program's text (str)")
    if not isinstance(stdin, str):
        raise TypeError(f"stdin: a {type(stdin).__name__}; pass text (str)")
    if not 0 < timeout_s < float("inf"):
        raise ValueError(f"timeout_s={timeout_s}: must be a finite number of seconds > 0")
    if memory_mb < 64:
        raise ValueError(f"memory_mb={memory_mb}: the interpreter alone needs more; pass at least 64 (MiB)")
    for name, text in files.items():
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts or "\0" in name or parts == ("main.py",):
            raise ValueError(
                f"files: {name!r}: names must be relative paths inside the working directory, without '..', "
                "and not 'main.py' (the program itself)"
            )
        if not isinstance(text, str):
            raise TypeError(f"files[{name!r}]: a {type(text).__name__}; pass text (str)")
    contents = {"main.py": source, **files}
    size = sum(len(text.encode()) for text in contents.values())
    if size > SCRATCH_MB << 19:
        raise ValueError(
            f"files: {size} bytes with the source; at most half of the {SCRATCH_MB} MiB working directory "
            "(d1.sandbox.SCRATCH_MB)"
        )
    return contents


@contextlib.contextmanager
def _memfd(name: str, data: bytes) -> Iterator[int]:
    """An anonymous in-memory file holding ``data``, positioned at its start (stdin and --file sources)."""
    fd = os.memfd_create(name)
    try:
        with open(fd, "wb", closefd=False) as file:
            file.write(data)
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def _limits(timeout_s: float, memory_mb: int, processes: bool) -> list[str]:
    """``prlimit`` options for one run (the process limit only where it counts this program alone)."""
    cpu = int(timeout_s) + 1
    options = [
        f"--as={memory_mb << 20}", f"--cpu={cpu}:{cpu + 1}", f"--fsize={SCRATCH_MB << 20}", "--core=0",
        f"--nofile={MAX_OPEN_FILES}",
    ]  # fmt: skip
    return ["prlimit", *options, *([f"--nproc={MAX_PROCESSES}"] if processes else []), "--"]


def _interpreter_dirs() -> list[str]:
    """The interpreter's prefixes (a venv and its base), outside the system folders, outermost only."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    kept = sorted(p for p in (os.path.realpath(p) for p in paths) if p != "/" and not _under(p, _SYSTEM_DIRS))
    return [p for p in kept if not _under(p, [q for q in kept if q != p])]


def _under(path: str, folders: Sequence[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _mounts() -> list[str]:
    """bwrap's read-only view of the system and interpreter, mirroring /bin, /lib... symlinks."""
    args = []
    for folder in _SYSTEM_DIRS:
        if os.path.islink(folder):
            args += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    folders = _interpreter_dirs()
    # bwrap would create the missing parents (/etc, /root, ...) with mode 0700: not searchable by the program
    parents = sorted(
        {str(p) for f in [*folders, "/etc/x"] for p in PurePosixPath(f).parents if str(p) != "/"}
    )
    for parent in parents:
        args += ["--perms", "0755", "--dir", parent]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for folder in folders:
        args += ["--ro-bind", folder, folder]
    return args


@contextlib.contextmanager
def _host_uid() -> Iterator[int]:
    """A host uid no other run of this process holds now, so that each program's process limit is its own
    (beyond ``_SLOTS_PER_PROCESS`` runs at once, a run waits for a free one)."""
    with _SLOTS_FREED:
        _SLOTS_FREED.wait_for(lambda: len(_SLOTS_USED) < _SLOTS_PER_PROCESS)
        slot = min(set(range(_SLOTS_PER_PROCESS)) - _SLOTS_USED)
        _SLOTS_USED.add(slot)
    try:
        yield HOST_UID_BASE + (os.getpid() % 10_000) * _SLOTS_PER_PROCESS + slot
    finally:
        with _SLOTS_FREED:
            _SLOTS_USED.discard(slot)
            _SLOTS_FREED.notify()


_SLOTS_FREED = threading.Condition()
_SLOTS_USED: set[int] = set()


def _run_bwrap(contents: Mapping[str, str], stdin_fd: int, timeout_s: float, memory_mb: int) -> RunResult:
    """One program in bubblewrap; the files go in through memfds (``--file``), the init's pid comes back
    through ``--info-fd`` so that a kill takes the whole PID namespace."""
    with contextlib.ExitStack() as stack:
        args = [BWRAP, *_scratch(), *_mounts()]  # /tmp first: an interpreter under /tmp is bound into it
        fds = []
        made = set()
        for name, text in contents.items():
            path = PurePosixPath(_WORKDIR, name)
            for parent in reversed(path.parents[: len(PurePosixPath(name).parts) - 1]):
                if parent not in made:
                    made.add(parent)
                    args += ["--perms", "0777", "--dir", str(parent)]
            fds.append(stack.enter_context(_memfd(name, text.encode())))
            args += ["--perms", "0666", "--file", str(fds[-1]), str(path)]
        seccomp = _seccomp_filter()
        if seccomp is not None:
            fds.append(stack.enter_context(_memfd("seccomp", seccomp)))
            args += ["--seccomp", str(fds[-1])]
        uid = stack.enter_context(_host_uid()) if os.geteuid() == 0 else None
        user, drop = _unprivileged(uid)
        info = os.pipe()
        stack.callback(os.close, info[0])
        args += [*_NAMESPACES, *user, "--info-fd", str(info[1]), "--chdir", _WORKDIR, "--clearenv"]
        for key, value in _ENV.items():
            args += ["--setenv", key, value]
        limits = _limits(timeout_s, memory_mb, processes=True)
        command = [*args, *limits, *drop, sys.executable, *_PYTHON_FLAGS, "main.py"]
        return _execute(command, stdin_fd, timeout_s, pass_fds=fds, info=info)


def _scratch() -> list[str]:
    """bwrap's private /proc and /dev, and the program's size-bounded tmpfs /tmp and /dev/shm (writable by
    it; /dev/shm holds multiprocessing's semaphores)."""
    size = str(SCRATCH_MB << 20)
    return ["--proc", "/proc", "--dev", "/dev", "--perms", "01777", "--size", size, "--tmpfs", "/dev/shm",
            "--perms", "0777", "--size", size, "--tmpfs", _WORKDIR]  # fmt: skip


def _seccomp_filter() -> bytes | None:
    """The sandbox's seccomp program (classic BPF, for bwrap's ``--seccomp``): ``_DENIED`` calls fail with
    EPERM, ``clone`` only when it asks for a new namespace, ``clone3`` with ENOSYS (its flags sit in memory
    a filter cannot read; the C library then falls back to ``clone``), another ABI (x32, i386) is killed.
    None on machines without a table in ``_SYSCALLS``."""
    if platform.machine() not in _SYSCALLS:
        return None
    arch, numbers = _SYSCALLS[platform.machine()]
    load, jump_eq, jump_ge, jump_set, ret = (
        0x20,
        0x15,
        0x35,
        0x45,
        0x06,
    )  # BPF_LD|W|ABS, BPF_JMP|..|K, BPF_RET|K
    allow, kill, refuse = 0x7FFF0000, 0x80000000, lambda code: 0x00050000 | code
    syscall = dict(zip(_DENIED, numbers, strict=True))
    program = [(load, 0, 0, 4), (jump_eq, 1, 0, arch), (ret, 0, 0, kill), (load, 0, 0, 0)]
    program += [(jump_ge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x86_64's x32 numbers
    for name in _DENIED[:-2]:
        program += [(jump_eq, 0, 1, syscall[name]), (ret, 0, 0, refuse(errno.EPERM))]
    program += [(jump_eq, 0, 1, syscall["clone3"]), (ret, 0, 0, refuse(errno.ENOSYS))]
    program += [(jump_eq, 0, 3, syscall["clone"]), (load, 0, 0, 16), (jump_set, 0, 1, _NEW_NAMESPACE_FLAGS)]
    program += [(ret, 0, 0, refuse(errno.EPERM)), (ret, 0, 0, allow)]
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in program)


def _unprivileged(uid: int | None) -> tuple[list[str], list[str]]:
    """bwrap's options and the command prefix that run the program as an unprivileged user: as root
    (``uid`` given), privileged bwrap lets ``setpriv`` switch to host ``uid`` without capabilities; otherwise
    a user namespace maps uid 65534 to the caller and forbids nested user namespaces."""
    if uid is None:
        nobody = str(_SANDBOX_UID)
        return ["--unshare-user", "--uid", nobody, "--gid", nobody, "--disable-userns"], []
    caps = ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]  # fmt: skip
    return caps, drop


def _run_weak(contents: Mapping[str, str], stdin_fd: int, timeout_s: float, memory_mb: int) -> RunResult:
    """One program with limits only (``D1_SANDBOX=rlimit``), in a fresh host folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="d1-sandbox-") as folder:
        for name, text in contents.items():
            path = Path(folder, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        env = {**_ENV, "HOME": folder, "TMPDIR": folder}
        command = [*_limits(timeout_s, memory_mb, processes=False), sys.executable, *_PYTHON_FLAGS, "main.py"]
        return _execute(command, stdin_fd, timeout_s, cwd=folder, env=env)


def _execute(
    command: list[str], stdin_fd: int, timeout_s: float, *, pass_fds: Sequence[int] = (),
    info: tuple[int, int] | None = None, cwd: str | None = None, env: dict[str, str] | None = None,
) -> RunResult:  # fmt: skip
    """Start ``command``, read its output within the limits and the deadline, end it and classify the end.
    ``info``: the pipe given to bwrap's ``--info-fd`` (its write end is closed here once bwrap has it)."""
    start = time.monotonic()
    try:
        process = subprocess.Popen(
            command, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env or {},
            pass_fds=(*pass_fds, *info[1:2]) if info else pass_fds, start_new_session=True,
        )  # fmt: skip
    finally:
        if info:
            os.close(info[1])
    streams: dict[int, bytearray] = {}
    init: list[int] = []  # a pidfd of the sandbox's init, once bwrap has told its pid
    try:
        cut = _read(process, start + timeout_s, info[0] if info else None, streams, init)
    finally:
        _end(process, init)
    elapsed = time.monotonic() - start
    out, err = (streams[p.fileno()].decode(errors="replace") for p in (process.stdout, process.stderr))
    process.stdout.close()
    process.stderr.close()
    return RunResult(
        _status(cut, process.returncode, err), _returncode(process.returncode), out, err, elapsed
    )


def _read(
    process: subprocess.Popen, deadline: float, info_fd: int | None, streams: dict[int, bytearray],
    init: list[int],
) -> str | None:  # fmt: skip
    """Read stdout, stderr (and bwrap's info) into ``streams`` (bytes per descriptor) until they close, the
    deadline passes ("timeout") or a stream passes the limit ("output_limit"); returns that reason or None.
    As soon as the info names the sandbox's init, a pidfd of it goes into ``init``.

    When the launched process has ended (checked every ``_POLL_S``), whatever it left behind is killed
    (``_stop``) and the streams are read for ``_EXIT_GRACE_S`` more at most, so that a leftover holding a
    pipe cannot stretch the run."""
    fds = [process.stdout.fileno(), process.stderr.fileno(), *([info_fd] if info_fd is not None else [])]
    streams.update({fd: bytearray() for fd in fds})
    grace_end = float("inf")
    with selectors.DefaultSelector() as selector:
        for fd in fds:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if now >= min(deadline, grace_end):
                return "timeout" if now >= deadline else None
            if grace_end == float("inf") and _exited(process.pid):
                _stop(process, init)  # the launched process has ended: its leftovers go now
                grace_end = now + _EXIT_GRACE_S
            for key, _ in selector.select(min(deadline, grace_end, now + _POLL_S) - now):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                streams[key.fd] += chunk
                if key.fd == info_fd:
                    init += [] if init else _pidfd(streams[key.fd])
                elif len(streams[key.fd]) > OUTPUT_LIMIT_BYTES:
                    del streams[key.fd][OUTPUT_LIMIT_BYTES:]
                    return "output_limit"
    try:
        process.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return "timeout"
    return None


def _exited(pid: int) -> bool:
    """Whether child ``pid`` has ended, without reaping it (so that its pid, and group id, stay ours)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _pidfd(info: bytes) -> list[int]:
    """A pidfd of the sandbox's init (PID 1 of its namespace), once bwrap's ``--info-fd`` JSON has named
    both its pid and its PID namespace; the pidfd is kept only if that process is in that namespace (so a
    pid reused by another process is never signalled). [] until then, or when the init is gone already."""
    pid = re.search(rb'"child-pid":\s*(\d+)', info)
    namespace = re.search(rb'"pid-namespace":\s*(\d+)', info)
    if not (pid and namespace):
        return []
    try:
        fd = os.pidfd_open(int(pid.group(1)))
    except ProcessLookupError:  # already gone, and its namespace with it
        return []
    try:
        ours = os.readlink(f"/proc/{int(pid.group(1))}/ns/pid") == f"pid:[{int(namespace.group(1))}]"
    except OSError:
        ours = False
    if not ours:
        os.close(fd)
    return [fd] if ours else []


def _stop(process: subprocess.Popen, init: list[int]) -> None:
    """Kill everything of the run: under bwrap the namespace's init (the kernel then kills every process in
    the namespace), in the weak mode the process group (while its leader is unreaped: the id is still ours)."""
    if init:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(init[0], signal.SIGKILL)
    elif process.returncode is None:
        _kill_group(process.pid)


def _end(process: subprocess.Popen, init: list[int]) -> None:
    """Make sure nothing of the run is left (``_stop``), then wait: under bwrap until the init's pidfd says it
    has exited, which the kernel allows only once every process of its namespace is gone (bwrap itself may
    exit earlier); then reap bwrap or the program."""
    _stop(process, init)
    if init:
        select.select(init, [], [], _KILL_GRACE_S)
        os.close(init[0])
    try:
        process.wait(_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        process.wait()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _returncode(code: int) -> int:
    """bwrap and shells report death by signal N as exit status 128 + N: return -N, as subprocess does."""
    return -(code - 128) if 128 < code < 128 + signal.NSIG else code


def _status(cut: str | None, code: int, stderr: str) -> str:
    """The ``RunResult.status`` of a run that stopped early for ``cut`` or ended with exit status ``code``."""
    if cut:
        return cut
    code = _returncode(code)
    if code == 0:
        return "ok"
    if code == -signal.SIGXCPU:
        return "timeout"
    if code < 0:
        return "killed"
    last = stderr.rstrip().rsplit("\n", 1)[-1]
    return "memory" if last.startswith("MemoryError") else "error"
