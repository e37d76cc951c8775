"""The edge agent on T-BOX userlands: armv7l and aarch64 Debian under qemu-user, beside x86-64.

For each architecture this builds a Debian userland with ``debootstrap --foreign`` (the mirror
is the one this machine's apt uses), installs ``lienwatch[edge]`` into a virtualenv *offline*
from a wheelhouse of wheels only (``pip download --only-binary=:all: --platform ...``), then
runs, inside the userland with ``qemu-<arch>-static -L ROOTFS ROOTFS/usr/bin/python3.11``:

1. a probe: import time and resident memory of the agent's imports, and a seal/open round trip
   of a one-minute batch (600 fixes, 600 CAN samples, 2 alerts);
2. ``lienwatch replay`` of the simulator's recorded ``night_doors`` scenario, checking its
   expected alert (``night_door_openings`` raised at the third night-time opening);
3. ``lienwatch agent run`` against a private Mosquitto on loopback, NMEA from a pty: started,
   connected, one signed batch received and verified here, stopped with SIGTERM (exit 0,
   drained).

x86-64 runs the same steps natively in the same run. Emulated figures are qemu's: times are
slower than a real Cortex-A7/A53 by a machine-dependent factor, and resident memory includes
the emulator and its translation cache (the ``python -c pass`` line is the floor to subtract).

On armv7l, PyPI has no wheel of cffi (cryptography's C backend), so the userland takes
Debian's ``python3-cffi`` (an OS package, as on the box's image) and the venv sees it
(``--system-site-packages``); every other package comes from the wheelhouse.

The second stage of debootstrap (configuring packages inside the userland) needs binfmt_misc
to run foreign binaries; without it the packages the first stage downloaded are unpacked with
``dpkg-deb -x``, which is all Python needs.

    sudo apt-get install debootstrap qemu-user-static    # once
    .venv/bin/python bench/tbox_arm_bench.py --workdir /var/tmp/tbox-bench
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge import keys  # noqa: E402
from firmware_sim.services import Mosquitto  # noqa: E402
from protocol import batch_topic, open_batch  # noqa: E402

PYTHON_VERSION = "3.11"
DEVICE = "car-tbox"
SCENARIO = "night_doors"
EXPECTED_ALERTS = [("night_door_openings", "raised")]


@dataclass(frozen=True)
class Arch:
    """One target: Debian architecture, uname machine, emulator and wheel platform tags."""

    debian: str
    machine: str
    qemu: str | None
    platforms: tuple[str, ...]
    debian_packages: tuple[str, ...]


def _manylinux(machine: str) -> tuple[str, ...]:
    glibc = (36, 35, 34, 33, 32, 31, 28, 27, 26, 24, 17)  # Debian bookworm has glibc 2.36
    return (*(f"manylinux_2_{v}_{machine}" for v in glibc), f"manylinux2014_{machine}", f"linux_{machine}")


ARCHES = {
    "armhf": Arch("armhf", "armv7l", "qemu-arm-static", _manylinux("armv7l"), ("python3.11", "python3-cffi")),
    "arm64": Arch("arm64", "aarch64", "qemu-aarch64-static", _manylinux("aarch64"), ("python3.11",)),
}
HOST = Arch("amd64", "x86_64", None, (), ())
#: Packages the armv7l userland provides from Debian instead of wheels (no armv7l wheel on PyPI).
OS_PROVIDED = {"armhf": {"cffi", "pycparser"}}

PROBE = r"""
import json, os, sys, time
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            yield line.split(":")[0], int(line.split()[1])
mode = sys.argv[1]
out = {"machine": os.uname().machine}
if mode == "floor":
    out.update(dict(rss_kib()))
    print(json.dumps(out)); sys.exit()
t0 = time.perf_counter()
import protocol
t1 = time.perf_counter()
import edge.agent
t2 = time.perf_counter()
out["import_protocol_s"] = t1 - t0
out["import_agent_s"] = t2 - t0
out["numpy_loaded"] = "numpy" in sys.modules
out.update(dict(rss_kib()))
from protocol import batch_topic, open_batch, seal_batch
from protocol.examples import EXAMPLE_DEVICE, example_key, minute_batch
import protocol._strict_cbor as strict
import cryptography
from importlib.metadata import version
batch, key, topic = minute_batch(), example_key(), batch_topic(EXAMPLE_DEVICE)
keys = {EXAMPLE_DEVICE: key.public_key()}
t0 = time.perf_counter(); message = seal_batch(batch, key, topic); t1 = time.perf_counter()
opened = open_batch(message, topic, keys); t2 = time.perf_counter()
same = protocol.encode_batch(opened) == protocol.encode_batch(batch)  # all the wire carries
out.update(seal_s=t1 - t0, open_s=t2 - t1, message_bytes=len(message), round_trip_ok=same,
           cbor2=version("cbor2"), cbor2_native_strict=strict.NATIVE_STRICTNESS,
           cryptography=cryptography.__version__, numpy_after_round_trip="numpy" in sys.modules)
print(json.dumps(out))
"""


def run(cmd: list[str], *, timeout: float = 1800, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, fail with its output when it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise SystemExit(
            f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result  # type: ignore[no-any-return]


def apt_mirror() -> tuple[str, str]:
    """(mirror URI, codename) of this machine's Debian main archive, from its apt configuration."""
    release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    codename = release.get("VERSION_CODENAME", "").strip('"')
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
            if codename in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0], codename
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == codename and "main" in words[3:]:
                    return words[1], codename
    raise SystemExit("no Debian main archive found in this machine's apt configuration")


def build_userland(arch: Arch, workdir: Path, mirror: str, codename: str) -> tuple[Path, dict[str, object]]:
    """debootstrap --foreign, then unpack the downloaded packages (second stage if binfmt allows)."""
    rootfs = workdir / f"rootfs-{arch.debian}"
    marker = rootfs / ".tbox-bench-ready"
    info: dict[str, object] = {}
    if marker.exists():
        info.update(json.loads(marker.read_text()))
        info["userland"] = "reused (built in an earlier run, figures from then)"
        return rootfs, info
    if rootfs.exists():
        shutil.rmtree(rootfs)
    start = time.perf_counter()
    run(
        [
            "debootstrap",
            "--foreign",
            f"--arch={arch.debian}",
            "--variant=minbase",
            f"--include={','.join(arch.debian_packages)}",
            codename,
            str(rootfs),
            mirror,
        ]
    )
    info["debootstrap_first_stage_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(rootfs)])
    info["unpack_s"] = round(time.perf_counter() - start, 1)
    info["packages"] = len(debs)
    binfmt = Path("/proc/sys/fs/binfmt_misc/status")
    info["second_stage"] = "not run: binfmt_misc is not available here" if not binfmt.exists() else "not needed"
    marker.write_text(json.dumps(info))
    return rootfs, info


def wheelhouse(arch: Arch, workdir: Path, dist: Path, reference: Path | None) -> Path:
    """Download wheels only for ``lienwatch[edge]`` and pip into an offline wheelhouse."""
    wh = workdir / f"wheels-{arch.machine}"
    if wh.exists():
        shutil.rmtree(wh)
    wh.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(wh)]
    if arch.platforms:
        pip += [f"--platform={p}" for p in arch.platforms]
        pip += [f"--python-version={PYTHON_VERSION}", "--implementation=cp", "--abi=cp311", "--abi=abi3", "--abi=none"]
    skip = OS_PROVIDED.get(arch.debian, set())
    if not skip:
        run([*pip, "--find-links", str(dist), "lienwatch[edge]", "pip"])
        return wh
    # cffi has no wheel for this machine, so pip cannot resolve the set here: take the versions
    # resolved for another architecture and fetch each for this one; cbor2 and cryptography
    # follow the environment markers in pyproject.toml (cbor2 5.x pure, cryptography < 46).
    assert reference is not None
    pins = []
    for wheel in reference.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        name = name.lower().replace("_", "-")
        if name not in skip and name not in {"cryptography", "cbor2", "lienwatch"}:
            pins.append(f"{name}=={version}")
    run([*pip, "--no-deps", "--find-links", str(dist), "lienwatch", "cryptography<46", "cbor2>=5.6,<6", *sorted(pins)])
    return wh


def python_cmd(arch: Arch, rootfs: Path | None, python: Path) -> list[str]:
    if arch.qemu is None:
        return [str(python)]
    assert rootfs is not None
    return [arch.qemu, "-L", str(rootfs), str(python)]


def install(arch: Arch, rootfs: Path | None, wh: Path, workdir: Path) -> tuple[Path, float]:
    """A venv in the userland, ``lienwatch[edge]`` installed from the wheelhouse, no index."""
    base = rootfs / "usr/bin/python3.11" if rootfs else Path(shutil.which("python3.11") or sys.executable)
    venv = (rootfs / "opt/lienwatch") if rootfs else workdir / "venv-x86_64"
    if venv.exists():
        shutil.rmtree(venv)
    flags = ["--without-pip"] + (["--system-site-packages"] if arch.debian in OS_PROVIDED else [])
    run([*python_cmd(arch, rootfs, base), "-m", "venv", *flags, str(venv)])
    pip_wheel = next(wh.glob("pip-*.whl"), None)
    if pip_wheel is None:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--no-deps",
                "-d",
                str(wh),
                "pip",
            ]
        )
        pip_wheel = next(wh.glob("pip-*.whl"))
    start = time.perf_counter()
    run(
        [
            *python_cmd(arch, rootfs, venv / "bin/python"),
            f"{pip_wheel}/pip",
            "install",
            "--quiet",
            "--no-index",
            "--only-binary=:all:",
            "--find-links",
            str(wh),
            "lienwatch[edge]",
        ]
    )
    return venv, time.perf_counter() - start


def probe(arch: Arch, rootfs: Path | None, venv: Path, workdir: Path) -> dict[str, object]:
    script = workdir / "probe.py"
    script.write_text(PROBE)
    py = python_cmd(arch, rootfs, venv / "bin/python")
    floor = json.loads(run([*py, str(script), "floor"]).stdout)
    best: dict[str, object] | None = None
    for _ in range(3):  # cold caches on the first run; keep the fastest import
        result = json.loads(run([*py, str(script), "full"], cwd=workdir).stdout)
        if best is None or result["import_agent_s"] < best["import_agent_s"]:  # type: ignore[operator]
            best = result
    assert best is not None
    best["floor_rss_kib"] = floor["VmRSS"]
    return best


def record_scenario(workdir: Path) -> tuple[Path, Path, Path]:
    nmea, can_log = workdir / f"{SCENARIO}.nmea", workdir / f"{SCENARIO}.log"
    if not nmea.exists():
        run(
            [
                sys.executable,
                "-m",
                "firmware_sim",
                "record",
                "--scenario",
                SCENARIO,
                "--nmea",
                str(nmea),
                "--can",
                str(can_log),
            ],
            cwd=ROOT,
        )
    data = ROOT / "edge" / "data"
    config = workdir / "replay.toml"
    config.write_text(
        '[can]\ninterface = "virtual"\nchannel = "replay"\n'
        f'dbc = ["{data / "generic_car.dbc"}"]\nsignal_map = "{data / "generic_car_map.toml"}"\n'
        f'\n[rules]\ntimezone = "Asia/Shanghai"\nmarkets_file = "{data / "markets.sample.toml"}"\n'
    )
    return config, nmea, can_log


def replay(arch: Arch, rootfs: Path | None, venv: Path, files: tuple[Path, Path, Path]) -> dict[str, object]:
    config, nmea, can_log = files
    start = time.perf_counter()
    result = run(
        [
            *python_cmd(arch, rootfs, venv / "bin/python"),
            "-m",
            "edge",
            "replay",
            "--config",
            str(config),
            "--nmea",
            str(nmea),
            "--can",
            str(can_log),
            "--jsonl",
            "--no-stats",
        ]
    )
    elapsed = time.perf_counter() - start
    alerts = [(r["rule"], r["state"]) for r in map(json.loads, result.stdout.splitlines()) if "rule" in r]
    return {"replay_s": round(elapsed, 1), "alerts": alerts, "alerts_ok": alerts == EXPECTED_ALERTS}


def _sentence(body: str) -> bytes:
    return f"${body}*{reduce(lambda acc, ch: acc ^ ord(ch), body, 0):02X}\r\n".encode()


def _epoch(second: int) -> bytes:
    t = f"0800{second:02d}.00"
    lat = f"31{18.0 + second * 0.001:07.4f}"
    return _sentence(f"GPGGA,{t},{lat},N,12115.0000,E,1,09,0.9,12.0,M,0.0,M,,") + _sentence(
        f"GPRMC,{t},A,{lat},N,12115.0000,E,0.0,0.0,010126,,,A"
    )


def agent_start_stop(arch: Arch, rootfs: Path | None, venv: Path, workdir: Path) -> dict[str, object]:
    """Start the agent, feed 6 epochs, receive and verify its batch, stop it with SIGTERM."""
    import paho.mqtt.client as mqtt  # the bench runs in the development venv

    folder = Path(tempfile.mkdtemp(prefix=f"agent-{arch.machine}-", dir=workdir))
    generated = keys.generate(folder / "keys", DEVICE)
    master, slave = os.openpty()
    tty.setraw(slave)
    broker = Mosquitto(workdir=folder / "mosquitto")
    broker.start()
    received: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{arch.machine}")
    client.on_message = lambda _c, _u, m: received.append(bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe(batch_topic(DEVICE), qos=1)
    client.loop_start()
    config = folder / "agent.toml"
    config.write_text(
        f'[device]\nid = "{DEVICE}"\nkey_file = "keys/{DEVICE}.key"\nlog_format = "json"\n'
        f'[gnss]\nurl = "{os.ttyname(slave)}"\n[batch]\nmax_age_s = 3600\nmax_fixes = 5\n'
        f"[mqtt]\nport = {broker.port}\nbackoff_min_s = 0.05\nshutdown_grace_s = 10\n"
    )
    log_path = folder / "agent.log"
    out: dict[str, object] = {}
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*python_cmd(arch, rootfs, venv / "bin/python"), "-m", "edge", "agent", "run", "--config", str(config)],
            stdout=log,
            stderr=log,
            cwd=folder,
        )
    peak_kib = 0
    try:
        deadline = time.monotonic() + 180
        while b'"event":"mqtt_connected"' not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent on {arch.machine} did not connect:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        out["start_to_connected_s"] = round(time.perf_counter() - start, 1)
        for second in range(7):
            os.write(master, _epoch(second))
        deadline = time.monotonic() + 120
        while not received and time.monotonic() < deadline:
            peak_kib = max(peak_kib, _rss_kib(proc.pid))
            time.sleep(0.2)
        peak_kib = max(peak_kib, _rss_kib(proc.pid))
        out["agent_rss_kib"] = peak_kib
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        client.loop_stop()
        client.disconnect()
        broker.close()
        os.close(master)
        os.close(slave)
    text = log_path.read_text()
    batches = [open_batch(p, batch_topic(DEVICE), {DEVICE: generated.public_key}) for p in received]
    out.update(
        exit_code=code,
        drained='"event":"agent_stopped","drained":true' in text,
        batches_verified=len(batches),
        fixes_in_first_batch=len(batches[0].fixes) if batches else 0,
    )
    out["agent_ok"] = code == 0 and bool(out["drained"]) and bool(batches)
    if not out["agent_ok"]:
        out["log_tail"] = text[-2000:]
    return out


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/lienwatch-tbox-bench"))
    parser.add_argument("--arch", action="append", choices=sorted(ARCHES), help="default: armhf and arm64")
    args = parser.parse_args(argv)
    for tool in ("debootstrap", "dpkg-deb", "qemu-arm-static", "qemu-aarch64-static", "python3.11"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install debootstrap qemu-user-static python3.11", file=sys.stderr)
            return 2
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    mirror, codename = apt_mirror()
    dist = workdir / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ]
    )
    files = record_scenario(workdir)
    results: dict[str, dict[str, object]] = {}
    reference: Path | None = None
    for arch in [HOST, *(ARCHES[a] for a in (args.arch or ["arm64", "armhf"]))]:
        row: dict[str, object] = {}
        rootfs = None
        if arch.qemu is not None:
            rootfs, info = build_userland(arch, workdir, mirror, codename)
            row.update(info)
        start = time.perf_counter()
        wh = wheelhouse(arch, workdir, dist, reference)
        row["wheelhouse_s"] = round(time.perf_counter() - start, 1)
        row["wheels"] = sorted(p.name for p in wh.glob("*.whl"))
        if arch.debian == "arm64":
            reference = wh
        venv, install_s = install(arch, rootfs, wh, workdir)
        row["offline_install_s"] = round(install_s, 1)
        row.update(probe(arch, rootfs, venv, workdir))
        row.update(replay(arch, rootfs, venv, files))
        row.update(agent_start_stop(arch, rootfs, venv, workdir))
        results[arch.machine] = row
        print(f"{arch.machine}: done", file=sys.stderr)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(_table(results))
    ok = all(r["alerts_ok"] and r["agent_ok"] and r["round_trip_ok"] for r in results.values())
    return 0 if ok else 1


def _table(results: dict[str, dict[str, object]]) -> str:
    rows = [
        ("python -c pass RSS (MiB)", lambda r: f"{int(r['floor_rss_kib']) / 1024:.1f}"),  # type: ignore[call-overload]
        ("import protocol (s)", lambda r: f"{r['import_protocol_s']:.2f}"),
        ("import edge.agent (s)", lambda r: f"{r['import_agent_s']:.2f}"),
        ("RSS after agent imports (MiB)", lambda r: f"{int(r['VmRSS']) / 1024:.1f}"),  # type: ignore[call-overload]
        ("numpy imported", lambda r: str(r["numpy_loaded"] or r["numpy_after_round_trip"])),
        ("cbor2 / native strict", lambda r: f"{r['cbor2']} / {r['cbor2_native_strict']}"),
        ("cryptography", lambda r: str(r["cryptography"])),
        ("seal minute batch (ms)", lambda r: f"{1000 * float(r['seal_s']):.1f}"),  # type: ignore[arg-type]
        ("open minute batch (ms)", lambda r: f"{1000 * float(r['open_s']):.1f}"),  # type: ignore[arg-type]
        ("offline install (s)", lambda r: str(r["offline_install_s"])),
        (f"replay {SCENARIO} (s)", lambda r: str(r["replay_s"])),
        ("replay alerts as expected", lambda r: str(r["alerts_ok"])),
        ("agent start->connected (s)", lambda r: str(r["start_to_connected_s"])),
        ("agent RSS running (MiB)", lambda r: f"{int(r['agent_rss_kib']) / 1024:.1f}"),  # type: ignore[call-overload]
        ("agent batch verified, stop ok", lambda r: str(r["agent_ok"])),
        ("debootstrap stage 1 (s)", lambda r: str(r.get("debootstrap_first_stage_s", "-"))),
        ("unpack packages (s)", lambda r: str(r.get("unpack_s", "-"))),
    ]
    machines = list(results)
    lines = [f"{'':34s}" + "".join(f"{m:>16s}" for m in machines)]
    for label, cell in rows:
        lines.append(f"{label:34s}" + "".join(f"{cell(results[m]):>16s}" for m in machines))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
