"""The FPBL's generic flavour: coldplug by modalias (unit tests, and with the real generic kernel's
modinfo data), and one boot on a QEMU node with an Intel e1000e NIC and an NVMe disk."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_fpbl import SECRET, FakeAgentApi

from rhaas.agent import coldplug as cp
from rhaas.imaging import ImageBuildError
from rhaas.imaging import kernel as kn
from rhaas.lab.qemu import QemuNode
from rhaas.provisioning import fpbl as fb

# What QEMU's devices say in /sys/bus/pci/devices/*/modalias (vendor, device, subsystem, class).
E1000E = "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"
NVME = "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"
PIIX_IDE = "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80"
VIRTIO_NET_PCI = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
VIRTIO_NET = "virtio:d00000001v00001AF4"


def _table() -> dict[str, object]:
    return cp.make_table(
        {
            "e1000e": (["pci:v00008086d000010D3sv*sd*bc*sc*i*"], []),
            "nvme": (["pci:v*d*sv*sd*bc01sc08i02*"], ["nvme_core"]),
            "nvme_core": ([], []),
            "virtio_pci": (["pci:v00001AF4d*sv*sd*bc*sc*i*"], ["virtio_ring", "virtio"]),
            "virtio_ring": ([], []),
            "virtio": ([], []),
            "virtio_net": (["virtio:d00000001v*"], ["net_failover"]),
            "net_failover": ([], ["failover"]),
            "failover": ([], []),
            "ata_piix": (["pci:v00008086d00007010sv*sd*bc*sc*i*"], ["libata", "scsi_mod"]),
            "libata": ([], ["scsi_mod"]),
            "scsi_mod": ([], ["scsi_common"]),
            "scsi_common": ([], []),
            "sd_mod": (["scsi:t-0x00*", "scsi:t-0x0E*"], ["scsi_mod", "scsi_common"]),
            "mlx4_core": (["pci:v000015B3d00001003sv*sd*bc*sc*i*"], []),
            "mlx4_en": ([], ["mlx4_core"]),
        }
    )


# --- matching ----------------------------------------------------------------------------------------


def test_aliases_match_by_glob_only_devices_they_name():
    m = cp.Matcher(_table()["aliases"])  # type: ignore[arg-type]
    assert m.match(E1000E) == ["e1000e"]
    assert m.match(NVME) == ["nvme"]  # by class, whatever the vendor
    assert m.match(VIRTIO_NET_PCI) == ["virtio_pci"]
    assert m.match(VIRTIO_NET) == ["virtio_net"]
    assert m.match("pci:v00008086d000010D4sv00008086sd00000000bc02sc00i00") == []  # another device id
    assert m.match(E1000E.lower()) == []  # case matters, as for the kernel's tools
    assert m.match("virtio:d00000002v00001AF4") == []
    both = cp.Matcher([("pci:v00008086d*", "a"), ("pci:v00008086d000010D3*", "b"), ("pci:*", "c")])
    assert both.match(E1000E) == ["a", "b", "c"]


def test_load_order_puts_dependencies_first_and_skips_what_is_loaded():
    depends = {"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a", "builtin"]}
    assert cp.load_order(["d"], depends, set()) == ["c", "b", "a", "d"]
    assert cp.load_order(["d", "a"], depends, {"c"}) == ["b", "a", "d"]
    assert cp.load_order(["unknown"], depends, set()) == []
    assert cp.load_order(["a"], {"a": ["b"], "b": ["a"]}, set()) == ["b", "a"]  # a cycle ends


def test_coldplug_loads_in_rounds_what_the_first_loads_bring():
    """virtio_pci's probe brings the virtio devices: virtio_net loads in the second round."""
    devices = {VIRTIO_NET_PCI, NVME}
    loads: list[str] = []

    def load(name: str) -> str | None:
        loads.append(name)
        if name == "virtio_pci":
            devices.add(VIRTIO_NET)
        return None

    done, failed = cp.coldplug(_table(), lambda: set(devices), load, loaded={"virtio"})
    assert failed == {}
    assert done == loads == ["nvme_core", "nvme", "virtio_ring", "virtio_pci", "failover", "net_failover",
                             "virtio_net"]  # fmt: skip


def test_coldplug_loads_the_scsi_disk_driver_with_a_scsi_host_and_skips_what_failed():
    loads: list[str] = []

    def load(name: str) -> str | None:
        loads.append(name)
        return "insmod: ENOENT" if name == "nvme_core" else None

    done, failed = cp.coldplug(_table(), lambda: {PIIX_IDE, NVME, E1000E}, load, loaded=set())
    assert done == ["scsi_common", "scsi_mod", "libata", "ata_piix", "e1000e", "sd_mod"]
    assert failed == {"nvme_core": "insmod: ENOENT", "nvme": "a module it depends on failed to load"}
    assert "nvme" not in loads and loads.count("nvme_core") == 1


def test_a_module_no_device_matches_loads_with_the_one_it_extends():
    """mlx4_core's probe would ask modprobe for mlx4_en; the FPBL has none: the table says to load both."""
    table = _table()
    assert table["modules"]["mlx4_core"] == {"depends": [], "with": ["mlx4_en"]}  # type: ignore[index]
    done, _ = cp.coldplug(table, lambda: {"pci:v000015B3d00001003sv000015B3sd00000050bc02sc00i00"},
                          lambda name: None, loaded=set())  # fmt: skip
    assert done == ["mlx4_core", "mlx4_en"]
    assert cp.coldplug(table, lambda: {E1000E}, lambda name: None, loaded=set())[0] == ["e1000e"]


def test_modaliases_are_read_from_every_bus(tmp_path):
    for bus, dev, alias in (("pci", "0000:00:03.0", E1000E), ("virtio", "virtio0", VIRTIO_NET),
                            ("pci", "0000:00:04.0", E1000E), ("platform", "serial8250", "")):  # fmt: skip
        d = tmp_path / "bus" / bus / "devices" / dev
        d.mkdir(parents=True)
        (d / "modalias").write_text(alias + "\n")
    (tmp_path / "bus" / "pci" / "devices" / "0000:00:00.0").mkdir()  # a device without one
    assert cp.read_modaliases(str(tmp_path)) == {E1000E, VIRTIO_NET}
    (tmp_path / "modules").write_text("e1000e 286720 0 - Live 0x0\nnvme 57344 0 - Live 0x0\n")
    assert cp.loaded_modules(str(tmp_path / "modules")) == {"e1000e", "nvme"}
    assert cp.loaded_modules(str(tmp_path / "none")) == set()


def test_main_reports_what_it_loaded_and_what_failed(tmp_path, monkeypatch, capsys):
    (tmp_path / "t.json").write_text(json.dumps(_table()))
    monkeypatch.setattr(cp, "read_modaliases", lambda: {E1000E})
    monkeypatch.setattr(cp, "loaded_modules", lambda: set())
    monkeypatch.setattr(cp, "insmod", lambda name: None)
    monkeypatch.setattr(cp.coldplug, "__defaults__", (cp.read_modaliases, cp.insmod, None))
    assert cp.main([str(tmp_path / "t.json")]) == 0
    assert "RHAAS-FPBL coldplug loaded: e1000e (" in capsys.readouterr().out
    assert cp.main([str(tmp_path / "missing.json")]) == 1
    assert "RHAAS-FPBL coldplug: no table" in capsys.readouterr().out


def test_a_module_gets_its_options_from_the_kernel_command_line_as_modprobe_gives_them():
    cmdline = "console=ttyS0 nvme.io_queue_depth=2 nvme_core.io_timeout=60 ixgbe.allow-unsupported_sfp=1 n.y"
    assert cp.module_options("nvme", cmdline) == ["io_queue_depth=2"]
    assert cp.module_options("nvme_core", cmdline) == ["io_timeout=60"]
    assert cp.module_options("nvme-core", cmdline) == ["io_timeout=60"], "- and _ are one"
    assert cp.module_options("ixgbe", cmdline) == ["allow-unsupported_sfp=1"]
    assert cp.module_options("e1000e", cmdline) == []


def test_insmod_hands_the_module_its_options_from_this_boots_command_line(monkeypatch):
    ran: list[list[str]] = []
    monkeypatch.setattr(cp, "_cmdline", lambda: "quiet nvme.io_queue_depth=2 e1000e.x=1")
    monkeypatch.setattr(
        cp.subprocess, "run", lambda argv, **kw: ran.append(argv) or subprocess.CompletedProcess(argv, 0)
    )
    assert cp.insmod("nvme") is None
    assert ran == [["insmod", f"{cp.MODULE_DIR}/nvme.ko", "io_queue_depth=2"]]


def test_parse_modinfo_reads_aliases_depends_and_firmware():
    text = (
        "filename:       /x/ice.ko\nfirmware:       intel/ice/ddp/ice.pkg\n"
        "alias:          pci:v00008086d00001888sv*sd*bc*sc*i*\n"
        "alias:          pci:v00008086d0000151Dsv*sd*bc*sc*i*\ndepends:        gnss,auxiliary\n"
        "parm:           debug:netif level (0= none,...,16= all) (int)\n"
    )  # fmt: skip
    info = kn.parse_modinfo("ice", Path("/x/ice.ko"), text)
    assert info.aliases == ("pci:v00008086d00001888sv*sd*bc*sc*i*", "pci:v00008086d0000151Dsv*sd*bc*sc*i*")
    assert info.depends == ("gnss", "auxiliary") and info.firmware == ("intel/ice/ddp/ice.pkg",)
    assert kn.parse_modinfo("x", Path("x.ko"), "depends:        \n").depends == ()
    soft = kn.parse_modinfo("x", Path("x.ko"), "softdep:        pre: crc32c crc-t10dif post: x\n")
    assert soft.pre == ("crc32c", "crc_t10dif")


# --- the init and the build's options ----------------------------------------------------------------


@pytest.mark.parametrize("modules", [None, ["virtio", "virtio_ring", "virtio_net"]])
def test_the_init_is_valid_shell_and_loads_by_coldplug_or_by_list(tmp_path, modules):
    init = fb.render_init("6.1.0-57-amd64", modules)
    script = tmp_path / "init"
    script.write_text(init)
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    assert ("-m rhaas.agent.coldplug" in init) is (modules is None)
    assert ("load virtio_ring\n" in init) is (modules is not None)
    assert 'ip addr add "$IP" dev "$NIC"' in init and "carrier" in init


def test_the_cloud_flavour_takes_no_extra_modules_or_firmware_and_its_key_has_no_hardware(tmp_path):
    with pytest.raises(ImageBuildError, match="generic flavour"):
        fb.build_fpbl(tmp_path, "cloud", extra_modules=["bnx2"])
    with pytest.raises(ImageBuildError, match="unknown FPBL flavour"):
        fb.build_fpbl(tmp_path, "server")
    with pytest.raises(ImageBuildError, match="does not exist"):
        fb.build_fpbl(tmp_path, "generic", firmware_dir=tmp_path / "nowhere")
    assert not (tmp_path / "fpbl").exists()
    versions = {"linux-image-x": "1", "busybox-static": "2"}
    cloud = fb._key(versions)
    assert cloud == fb._key(versions, None)
    generic = fb._key(versions, {"flavour": "generic", "drivers": list(fb.GENERIC_DRIVERS), "firmware": {}})
    extra = fb._key(versions, {"flavour": "generic", "drivers": [*fb.GENERIC_DRIVERS, "x"], "firmware": {}})
    assert len({cloud, generic, extra}) == 3


def test_firmware_files_are_found_below_the_directory(tmp_path):
    (tmp_path / "bnx2").mkdir()
    (tmp_path / "bnx2" / "bnx2-mips-09-6.2.1b.fw").write_bytes(b"fw")
    (tmp_path / "rtl_nic").mkdir()
    (tmp_path / "rtl_nic" / "rtl8168h-2.fw").write_bytes(b"fw2")
    (tmp_path / "rtl_nic" / "link.fw").symlink_to("rtl8168h-2.fw")
    assert sorted(fb._firmware_files(tmp_path)) == [
        "bnx2/bnx2-mips-09-6.2.1b.fw", "rtl_nic/link.fw", "rtl_nic/rtl8168h-2.fw"
    ]  # fmt: skip


# --- with the real generic kernel's modinfo data ------------------------------------------------------


@pytest.fixture(scope="module")
def generic_kernel() -> kn.Kernel:
    """Debian's generic kernel, unpacked once per version under the cache (downloaded the first time)."""
    from rhaas.imaging.debs import resolve_kernel_package

    try:
        return kn.fetch_kernel(None, resolve_kernel_package(fb.GENERIC_KERNEL_META_PACKAGE))
    except ImageBuildError as exc:
        pytest.skip(f"no generic kernel package: {exc}")


@pytest.fixture(scope="module")
def real_table(generic_kernel) -> tuple[dict[str, kn.ModInfo], dict[str, Any]]:
    names = kn.select_modules(generic_kernel.modules_dir, fb.GENERIC_DRIVERS, fb.GENERIC_EXCLUDED)
    infos = kn.coldplug_closure(generic_kernel.modules_dir, names)
    return infos, cp.make_table({n: (m.aliases, m.depends) for n, m in infos.items()})


@pytest.mark.slow
def test_the_real_generic_kernels_table_matches_server_devices(real_table):
    infos, table = real_table
    for driver in ("e1000e", "igb", "ixgbe", "i40e", "ice", "tg3", "bnxt_en", "mlx4_en", "mlx5_core",
                   "r8169", "nvme", "ahci", "megaraid_sas", "mpt3sas", "sd_mod", "virtio_net"):  # fmt: skip
        assert driver in infos, driver
    m = cp.Matcher(table["aliases"])
    assert m.match(E1000E) == ["e1000e"]
    assert m.match(NVME) == ["nvme"]
    assert m.match("pci:v00008086d00001521sv000015D9sd00001521bc02sc00i00") == ["igb"]  # i350
    assert m.match("pci:v000015B3d00001017sv000015B3sd00000020bc02sc00i00") == ["mlx5_core"]  # ConnectX-5
    assert m.match("pci:v000014E4d000016D7sv000014E4sd00001402bc02sc00i00") == ["bnxt_en"]  # BCM57414
    assert m.match("pci:v00001000d00000097sv00001000sd00003090bc01sc07i00") == ["mpt3sas"]  # SAS3008
    assert "ahci" in m.match("pci:v00008086d0000A102sv000015D9sd00000832bc01sc06i01")  # by class
    assert "sd_mod" in m.match("scsi:t-0x00")
    assert m.match(VIRTIO_NET) == ["virtio_net"]
    # Dependencies come first, whatever this kernel build says they are.
    depends = {n: list(i.depends) for n, i in infos.items()}
    order = cp.load_order(["mlx5_core", "nvme"], depends, set())
    for name in order:
        assert all(order.index(d) < order.index(name) for d in depends[name] if d in depends), name
    assert {"nvme_core", "mlxfw"} <= set(order) and order[-1] in ("mlx5_core", "nvme")
    # libcrc32c (bnx2x needs it) fails to load without a crc32c implementation: its soft dependency.
    assert "crc32c_generic" in depends["libcrc32c"] and "libcrc32c" in depends["bnx2x"]
    # ice wants its DDP package, from a non-free firmware package.
    assert "intel/ice/ddp/ice.pkg" in infos["ice"].firmware
    # Modules no device can match (cnic, loaded by other modules) stay out unless another needs them.
    needed = {d for i in infos.values() for d in i.depends}
    companions = {c for entry in table["modules"].values() for c in entry.get("with", ())}
    assert companions == {"mlx4_en"} and "cnic" not in infos
    assert all(n in needed | companions or any(cp.is_device_alias(a) for a in i.aliases)
               for n, i in infos.items())  # fmt: skip
    assert not {"b44", "ssb", "pcmcia", "iavf"} & set(infos), "left out, and nothing brings them back"


# --- one boot on server-like hardware ------------------------------------------------------------------


@pytest.fixture
def fake_api() -> Iterator[FakeAgentApi]:
    api = FakeAgentApi()
    yield api
    api.close()


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64")
def test_the_generic_fpbl_coldplugs_an_e1000e_nic_and_an_nvme_disk(fake_api, tmp_path_factory, nodes):
    """SeaBIOS, direct kernel boot; the NIC is Intel's e1000e and the disk NVMe: no virtio anywhere."""
    fpbl = fb.build_fpbl(flavour="generic")
    workdir = tmp_path_factory.mktemp("gen")
    disk = workdir / "nvme.raw"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    node = QemuNode(
        "gen", workdir, memory_mb=1280, user_net=True, disk_size=None, nic_model="e1000e",
        kernel=fpbl.kernel, initrd=fpbl.initrd,
        append=fpbl.cmdline_for(f"http://10.0.2.2:{fake_api.port}", "gen", SECRET, ip="10.0.2.15/24",
                                gw="10.0.2.2"),
        extra_args=["-drive", f"if=none,id=d0,file={disk},format=raw",
                    "-device", "nvme,drive=d0,serial=rhaas0"],
    )  # fmt: skip
    nodes.append(node)
    started = time.monotonic()
    node.start()
    checkin = fake_api.wait_for("check-in", lambda: fake_api.checkins, 240)[0]
    took = checkin[0] - started
    text = node.console_text()
    loaded = node.wait_for_console(r"RHAAS-FPBL coldplug loaded: ([^\n(]*)", 5)
    modules = loaded.group(1).split()
    print(f"\ngeneric FPBL: kernel {fpbl.sizes['kernel']} B, initrd {fpbl.sizes['initrd']} B; "
          f"QEMU start -> check-in {took:.1f} s; coldplug loaded {modules}")  # fmt: skip
    assert {"e1000e", "nvme", "nvme_core"} <= set(modules), text
    assert modules.index("nvme_core") < modules.index("nvme")
    assert not {"virtio_net", "virtio_blk", "igb", "mlx5_core"} & set(modules), "only what the devices match"
    assert "RHAAS-FPBL nic eth0" in text and "FAILED" not in text
    # The agent reached the API through the e1000e NIC and sees the NVMe disk.
    assert checkin[1]["mode"] == "ready"
    assert checkin[1]["disks"] == [{"name": "nvme0n1", "size": 64 << 20}]
    node.stop()


@pytest.mark.slow
def test_extra_modules_and_firmware_go_into_the_initramfs(generic_kernel, tmp_path):
    (tmp_path / "intel" / "ice" / "ddp").mkdir(parents=True)
    (tmp_path / "intel" / "ice" / "ddp" / "ice-1.3.30.0.pkg").write_bytes(b"ddp")
    (tmp_path / "intel" / "ice" / "ddp" / "ice.pkg").symlink_to("ice-1.3.30.0.pkg")
    entries: dict[str, Any] = {}
    modules, account = fb._add_drivers(
        entries, generic_kernel, [*fb.GENERIC_DRIVERS, "aacraid"], fb._firmware_files(tmp_path)
    )
    assert "aacraid" in modules and "lib/modules/aacraid.ko" in entries
    assert entries["lib/firmware/intel/ice/ddp/ice.pkg"].data == b"ddp"
    missing = account["firmware_missing"]
    assert isinstance(missing, dict) and "ice" not in missing and "bnx2" in missing
    table = json.loads(entries["lib/modules/coldplug.json"].data)
    assert set(table["modules"]) == set(modules)
    assert {f"lib/modules/{m}.ko" for m in modules} <= set(entries)
    assert cp.Matcher(table["aliases"]).match("pci:v00009005d00000285sv00009005sd00000286bc01sc04i00") == [
        "aacraid"
    ]
    with pytest.raises(ImageBuildError, match="no-such-driver"):
        fb._add_drivers({}, generic_kernel, ["no-such-driver"], {})
