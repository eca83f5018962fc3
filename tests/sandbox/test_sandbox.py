"""d1.sandbox: programs run, limits hold and attacks stay inside, each checked from the host's side."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path, PurePosixPath

import pytest

from d1 import sandbox
from d1.sandbox import (
    OUTPUT_LIMIT_BYTES,
    Program,
    SandboxUnavailable,
    check_sandbox,
    run_program,
    run_programs,
)
from tests.conftest import REPO_ROOT, require_sandbox


@pytest.fixture(autouse=True)
def _default_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sandbox.MODE_ENV, raising=False)


@pytest.fixture
def strong() -> None:
    """Bubblewrap works here, or the test fails (as root, where `make test` installs it) or skips, saying why."""
    require_sandbox()


needs_bwrap = pytest.mark.usefixtures("strong")


def _code(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


def _leftovers(marker: str, uids: range | None = None) -> list[int]:
    """Host pids of live processes whose command line holds ``marker`` or whose uid is in ``uids`` (default:
    the host uids this test process gives its sandboxes; other processes' sandboxes may be running meanwhile).
    Zombies are not counted: they run nothing and wait for the host's init to reap them."""
    if uids is None:
        first = sandbox.HOST_UID_BASE + (os.getpid() % 10_000) * sandbox._SLOTS_PER_PROCESS
        uids = range(first, first + sandbox._SLOTS_PER_PROCESS)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue  # ended meanwhile
        uid = int(status.split("\nUid:")[1].split()[0])
        if "\nState:\tZ" not in status and (marker.encode() in cmdline or uid in uids):
            found.append(int(entry.name))
    return found


# Behaviour


@needs_bwrap
def test_ok_program_prints_and_passes() -> None:
    result = run_program("print(6 * 7)")
    assert (result.status, result.returncode, result.stdout, result.stderr) == ("ok", 0, "42\n", "")
    assert result.passed and 0 < result.elapsed_s < 5


@needs_bwrap
def test_errors_exit_status_and_traceback() -> None:
    exited = run_program("import sys\nsys.exit(3)")
    assert (exited.status, exited.returncode, exited.passed) == ("error", 3, False)
    raised = run_program("1 / 0")
    assert (raised.status, raised.returncode) == ("error", 1)
    assert raised.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert 'File "/tmp/main.py", line 1' in raised.stderr


@needs_bwrap
def test_stdin_and_files_in_a_fresh_working_directory() -> None:
    source = _code("""
        import os, helper
        print(input()[::-1], helper.VALUE, open("data/deep/x.txt").read())
        print(sorted(os.listdir(".")), os.getcwd())
        open("data/deep/x.txt", "a").write("!")  # the program's own files are writable
        open("new.txt", "w").write("made")
        print(open("data/deep/x.txt").read(), open("new.txt").read())
    """)
    files = {"helper.py": "VALUE = 5\n", "data/deep/x.txt": "dëep"}
    result = run_program(source, stdin="abç😀\n", files=files)
    assert result.status == "ok", result.stderr
    # an interpreter that lives under /tmp (a venv in a checkout there) is bound read-only inside it
    inside = [PurePosixPath(p).parts[2] for p in sandbox._interpreter_dirs() if PurePosixPath(p).parts[1:2] == ("tmp",)]
    assert result.stdout.splitlines() == [
        "😀çba 5 dëep",
        f"{sorted({'data', 'helper.py', 'main.py', *inside})} /tmp",
        "dëep! made",
    ]


@needs_bwrap
def test_runs_as_a_non_root_user_with_a_cleared_environment() -> None:
    source = _code("""
        import os
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
        print(sorted(os.environ))
        try:
            os.setuid(0)
        except PermissionError:
            print("setuid refused")
    """)
    result = run_program(source)
    ids, env, refusal = result.stdout.splitlines()
    assert "0" not in ids.split()[:3] and ids.endswith("[]")
    assert env == str(sorted([*sandbox._ENV, "PWD"]))
    assert refusal == "setuid refused"


@needs_bwrap
def test_subprocesses_threads_and_multiprocessing_work() -> None:
    source = _code("""
        import multiprocessing, subprocess, sys, threading

        def square(x):
            return x * x

        if __name__ == "__main__":
            with multiprocessing.Pool(2) as pool:
                print(pool.map(square, range(5)))
            print(subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True, text=True).stdout)
            thread = threading.Thread(target=print, args=("thread",))
            thread.start()
            thread.join()
    """)
    result = run_program(source)
    assert result.stdout.split() == ["[0,", "1,", "4,", "9,", "16]", "child", "thread"], result.stderr


@needs_bwrap
def test_timeout_kills_an_infinite_loop_within_bounds() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass", timeout_s=1.0)
    assert (result.status, result.returncode) == ("timeout", -signal.SIGKILL)
    assert 1.0 <= result.elapsed_s < 3.0 and time.monotonic() - start < 3.5


@needs_bwrap
def test_memory_limit() -> None:
    grow = run_program("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))", memory_mb=256)
    assert grow.status == "memory" and grow.stderr.rstrip().endswith("MemoryError"), grow
    at_once = run_program("x = bytearray(4 << 30)", memory_mb=256)
    assert at_once.status == "memory" and at_once.elapsed_s < 5
    assert run_program("x = bytearray(100 << 20)\nprint(len(x))", memory_mb=512).stdout == "104857600\n"


@needs_bwrap
def test_signals_are_reported_as_killed() -> None:
    result = run_program("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (result.status, result.returncode) == ("killed", -signal.SIGSEGV)


@needs_bwrap
def test_run_programs_keeps_the_order_with_two_workers() -> None:
    programs = [
        Program("print(input())", stdin="first"), "import sys\nsys.exit(2)", "while True:\n    pass",
        Program("import f\nprint(f.X)", files={"f.py": "X = 'file'"}), "print('last')",
    ]  # fmt: skip
    open_fds = len(os.listdir("/proc/self/fd"))
    results = run_programs(programs, workers=2, timeout_s=1.0)
    assert [r.status for r in results] == ["ok", "error", "timeout", "ok", "ok"]
    assert [results[i].stdout for i in (0, 3, 4)] == ["first\n", "file\n", "last\n"]
    assert run_programs([]) == []
    many = run_programs([f"print({i})" for i in range(24)], workers=8)
    assert [r.stdout for r in many] == [f"{i}\n" for i in range(24)]
    assert len(os.listdir("/proc/self/fd")) == open_fds  # no pipe, memfd or pidfd left open


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"files": {"../x.py": ""}}, "files: '../x.py'"),
        ({"files": {"/etc/x": ""}}, "files: '/etc/x'"),
        ({"files": {"./main.py": ""}}, "not 'main.py'"),
        ({"files": {".": ""}}, "files: '.'"),
        ({"timeout_s": 0}, "timeout_s=0"),
        ({"timeout_s": float("inf")}, "timeout_s=inf"),
        ({"memory_mb": 8}, "memory_mb=8"),
    ],
)
def test_bad_arguments_are_refused_before_running(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_program("print(1)", **kwargs)


def test_bad_worker_count_and_mode_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="workers=0"):
        run_programs(["print(1)"], workers=0)
    monkeypatch.setenv(sandbox.MODE_ENV, "none")
    with pytest.raises(ValueError, match="D1_SANDBOX='none'.*'rlimit'"):
        run_program("print(1)")


# Attacks: each contained, the host checked from outside


@needs_bwrap
def test_fork_bomb_is_bounded_and_leaves_nothing(tmp_path: Path) -> None:
    marker = f"d1-bomb-{secrets.token_hex(4)}"
    counted = _code(f"""
        import os, sys, time
        forked = 0
        while forked < 1000:
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(30)", "{marker}"])
            forked += 1
        print(forked)
    """)
    result = run_program(counted, timeout_s=10.0)
    assert result.status == "ok" and 0 < int(result.stdout) < sandbox.MAX_PROCESSES, result
    bomb = run_program(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", timeout_s=2
    )
    assert bomb.status == "timeout" and bomb.elapsed_s < 4
    assert _leftovers(marker) == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


@needs_bwrap
def test_detached_daemon_dies_with_the_program(tmp_path: Path) -> None:
    marker = f"d1-daemon-{secrets.token_hex(4)}"
    target = tmp_path / "daemon-was-here"
    daemon = f"import time; time.sleep(0.5); open({str(target)!r}, 'w'); open('/tmp/x', 'w'); time.sleep(30)"
    source = _code(f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", {daemon!r}, "{marker}"])
            os._exit(0)
        os.wait()
        print("parent done")
    """)
    result = run_program(source, timeout_s=10.0)
    assert result.status == "ok" and result.stdout == "parent done\n"
    assert result.elapsed_s < 3  # the daemon holds stdout open: it did not keep the run going
    assert _leftovers(marker) == []
    time.sleep(1.0)
    assert not target.exists() and _leftovers(marker) == []


@needs_bwrap
def test_no_network_even_to_the_hosts_loopback() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        source = _code(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"pwned")
                print("connected")
            except OSError as error:
                print(type(error).__name__)
            try:
                socket.getaddrinfo("example.com", 80)
                print("resolved")
            except OSError as error:
                print(type(error).__name__)
        """)
        result = run_program(source)
        assert result.status == "ok" and "connected" not in result.stdout and "resolved" not in result.stdout
        with pytest.raises(TimeoutError):
            listener.accept()


@needs_bwrap
def test_host_files_can_be_neither_written_nor_read(tmp_path: Path) -> None:
    secret = secrets.token_hex(16)
    # world-readable secrets, in the host's /tmp and outside it (only the mounts keep them away)
    hidden = [tmp_path / "secret.txt", REPO_ROOT / ".pytest_cache" / f"sandbox-secret-{secret[:8]}.txt"]
    targets = [tmp_path / "pwned.txt", REPO_ROOT / "pwned.txt", Path(sys.prefix) / "pwned.txt"]
    source = _code(f"""
        import glob, os
        for path in {[str(t) for t in targets]!r}:
            try:
                open(path, "w").write("pwned")
                print("wrote", path)
            except OSError as error:
                print(type(error).__name__)
        for path in {[str(h) for h in hidden]!r} + ["/etc/shadow", "/etc/passwd", os.path.expanduser("~/.ssh/id_rsa")]:
            try:
                print(open(path).read())
            except OSError as error:
                print(type(error).__name__)
        repo = {str(REPO_ROOT)!r}
        print(sorted(os.listdir(repo)) if os.path.exists(repo) else None, glob.glob("/root/*"), glob.glob("/home/*"))
    """)
    try:
        for path in hidden:
            path.parent.mkdir(exist_ok=True)
            path.write_text(secret)
            path.chmod(0o644)
        result = run_program(source)
    finally:
        hidden[1].unlink()
    assert result.status == "ok", result.stderr
    assert "wrote" not in result.stdout and secret not in result.stdout + result.stderr
    # the checkout is not there; only its .venv is, read-only, when the interpreter's venv lives in it (make test)
    in_checkout = Path(sys.prefix).resolve().is_relative_to(REPO_ROOT.resolve())
    assert result.stdout.splitlines()[-1] == f"{[Path(sys.prefix).name] if in_checkout else None} [] []"
    assert not any(t.exists() for t in targets)


@needs_bwrap
def test_host_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_hex(16)
    monkeypatch.setenv("D1_TEST_SECRET", secret)
    source = _code("""
        import glob, os
        print(dict(os.environ))
        for path in glob.glob("/proc/*/environ"):
            try:
                print(open(path, "rb").read())
            except OSError as error:
                print(type(error).__name__)
    """)
    result = run_program(source)
    assert result.status == "ok" and "D1_TEST_SECRET" not in result.stdout and secret not in result.stdout


@needs_bwrap
@pytest.mark.parametrize("attack", ["os.kill(os.getppid(), signal.SIGKILL)", "os.kill(-1, signal.SIGKILL)"])
def test_killing_other_processes_harms_nothing_outside(attack: str) -> None:
    bystander = subprocess.Popen(["sleep", "30"])  # a host process of the same user as the caller
    try:
        result = run_program(
            f"import os, signal, time\n{attack}\ntime.sleep(0.2)\nprint('after')", timeout_s=5
        )
        assert result.status in ("ok", "error", "killed") and result.elapsed_s < 3
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@needs_bwrap
@pytest.mark.skipif(sandbox._seccomp_filter() is None, reason="no seccomp table for this machine")
def test_namespace_tracing_and_kernel_interface_calls_are_refused() -> None:
    source = _code("""
        import ctypes, errno, os
        libc = ctypes.CDLL(None, use_errno=True)
        def call(name, *args):
            ctypes.set_errno(0)
            getattr(libc, name)(*args)
            return errno.errorcode.get(ctypes.get_errno(), "ok")
        print(call("unshare", 0x10000000), call("unshare", 0x00020000))  # new user, mount namespace
        print(call("ptrace", 16, 1, 0, 0), call("setns", os.open("/proc/self/ns/uts", os.O_RDONLY), 0))
        print(call("mount", b"none", b"/tmp", b"tmpfs", 0, None))
    """)
    result = run_program(source)
    assert result.stdout.split() == ["EPERM"] * 5, result


@needs_bwrap
def test_unbounded_output_is_cut(capfd: pytest.CaptureFixture) -> None:
    for stream in ("stdout", "stderr"):
        result = run_program(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 4096)", timeout_s=10)
        assert result.status == "output_limit" and result.elapsed_s < 5
        assert len(getattr(result, stream)) == OUTPUT_LIMIT_BYTES
    assert capfd.readouterr() == ("", "")  # nothing reached the caller's own streams


@needs_bwrap
def test_scratch_space_is_bounded() -> None:
    source = _code("""
        import os
        written = 0
        try:
            for i in range(100):
                with open(f"f{i}", "wb") as f:
                    f.write(bytes(8 << 20))
                written += 8
        except OSError as error:
            print(type(error).__name__, written)
    """)
    result = run_program(source)
    name, written = result.stdout.split()
    assert name == "OSError" and int(written) < sandbox.SCRATCH_MB


# Refusal and the opt-in weak mode


def test_missing_bubblewrap_refuses_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-such-bwrap"))
    problem = check_sandbox()
    assert problem and "no-such-bwrap" in problem and "apt-get install bubblewrap" in problem
    assert "Apptainer" in problem and "D1_SANDBOX=rlimit" in problem
    marker = tmp_path / "ran"
    for call in (lambda: run_program(f"open({str(marker)!r}, 'w')"), lambda: run_programs(["print(1)"])):
        with pytest.raises(SandboxUnavailable, match="no-such-bwrap"):
            call()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("0.8.0", "No permissions to creating new namespace"),
        ("0.6.1", "bubblewrap 0.6.1; the sandbox needs 0.8"),
    ],
)
def test_broken_or_old_bubblewrap_refuses_saying_why(
    version: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && echo "bubblewrap {version}" && exit 0\n'
        "echo 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "BWRAP", str(fake))
    with pytest.raises(SandboxUnavailable, match=message):
        run_program("print(1)")


def test_rlimit_mode_is_opt_in_warns_once_and_keeps_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-such-bwrap"))
    monkeypatch.setattr(sandbox, "_WARNED", [])
    monkeypatch.setenv(sandbox.MODE_ENV, "rlimit")
    first = run_program("print(input(), open('a.txt').read())", stdin="hé", files={"a.txt": "😀"})
    assert (first.status, first.stdout) == ("ok", "hé 😀\n")
    assert run_program("while True:\n    pass", timeout_s=1).status == "timeout"
    assert run_program("x = bytearray(4 << 30)", memory_mb=256).status == "memory"
    assert run_program("while True:\n    print('x' * 4096)").status == "output_limit"
    assert capfd.readouterr().err.count("WITHOUT the OS sandbox") == 1
    # what the weak mode does not do: a daemon that leaves the process group survives the run
    marker = f"d1-weak-daemon-{secrets.token_hex(4)}"
    daemon = _code(f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(30)", "{marker}"])
        print("parent done")
    """)
    result = run_program(daemon)
    survivors = _leftovers(marker, range(0))
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert (result.status, result.stdout) == ("ok", "parent done\n") and result.elapsed_s < 3
    assert len(survivors) == 1


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK), reason="needs root")
def test_unprivileged_callers_get_the_user_namespace_sandbox(tmp_path: Path) -> None:
    """As an ordinary user (as on a cluster) bwrap maps uid 65534 in a user namespace; the system Python stands
    in for the caller's interpreter, which may sit in a folder that user cannot read."""
    readable = Path(tempfile.mkdtemp(prefix="d1-sandbox-module-", dir="/tmp"))  # the checkout may be unreadable
    readable.chmod(0o755)  # to that user (a clone in a 0700 folder); the module imports nothing from d1
    shutil.copy(REPO_ROOT / "src" / "d1" / "sandbox.py", readable / "sandbox.py")
    script = _code(f"""
        import sys
        sys.path.insert(0, {str(readable)!r})
        from sandbox import check_sandbox, run_program
        assert check_sandbox() is None, check_sandbox()
        print(run_program("import os; print(os.getuid(), sorted(os.environ))").stdout.strip())
        bomb = "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass"
        print(run_program(bomb, timeout_s=1).status)
        print(run_program("import socket; socket.create_connection(('127.0.0.1', 22), timeout=1)").status)
    """)
    user = 1_900_000_000 + os.getpid() % 100_000  # an unused uid of this test alone
    try:
        done = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", script], user=user, group=user, extra_groups=[], cwd="/",
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        shutil.rmtree(readable)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"65534 {sorted([*sandbox._ENV, 'PWD'])}", "timeout", "error"]
    assert _leftovers("d1-unprivileged", range(user, user + 1)) == []
