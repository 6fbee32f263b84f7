"""Real disk images for the agent's partition, file system and boot entry readers, made with the real tools.

File systems are made from directory trees (``mkfs.ext4 -d``, ``mkfs.xfs -p`` with a protofile,
``mkfs.vfat`` and ``mcopy``), partition tables with ``sfdisk`` on sparse files, and file systems are placed
into partitions with ``dd conv=notrunc``. Nothing is mounted. The tools come from scripts/bootstrap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("mkfs.ext4", "mkfs.xfs", "mkfs.vfat", "mcopy", "mmd", "sfdisk", "blkid", "cryptsetup", "mkfs.btrfs")
MIB = 1 << 20


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's whole content, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"missing {', '.join(missing)}: run scripts/bootstrap"


def run(*cmd: str | Path, stdin: str | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{cmd[0]} failed: {done.stderr.strip()}"
    return done.stdout


@dataclass(frozen=True)
class Link:
    """A symbolic link in a tree given to `make_tree`."""

    target: str


def make_tree(root: Path, files: dict[str, bytes | str | Link | None]) -> Path:
    """A directory tree: path -> contents (bytes or text), a `Link`, or None for an empty directory."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel.lstrip("/")
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            os.symlink(content.target, path)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    return root


def sparse(path: Path, size_mib: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    return path


def ext4(path: Path, size_mib: int, tree: Path | None, *options: str, label: str = "") -> Path:
    sparse(path, size_mib)
    args = ["mkfs.ext4", "-q", "-F", *options]
    if label:
        args += ["-L", label]
    if tree is not None:
        args += ["-d", str(tree)]
    run(*args, path)
    return path


def protofile(tree: Path) -> str:
    """An xfs protofile (``mkfs.xfs -p``) that copies ``tree``: directories, files and links."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(directory: Path, depth: int) -> None:
        indent = " " * depth
        for entry in sorted(directory.iterdir()):
            if " " in entry.name:
                raise ValueError(f"a protofile cannot name {entry.name!r}")
            if entry.is_symlink():
                lines.append(f"{indent}{entry.name} l--777 0 0 {os.readlink(entry)}")
            elif entry.is_dir():
                lines.append(f"{indent}{entry.name} d--755 0 0")
                walk(entry, depth + 1)
                lines.append(f"{indent}$")
            else:
                lines.append(f"{indent}{entry.name} ---644 0 0 {entry}")

    walk(tree, 1)
    lines.append("$")
    return "\n".join(lines) + "\n"


def xfs(path: Path, size_mib: int, tree: Path, *options: str, label: str = "") -> Path:
    sparse(path, size_mib)
    proto = path.with_suffix(".proto")
    proto.write_text(protofile(tree))
    args = ["mkfs.xfs", "-q", "-f", *options, "-p", str(proto)]
    if label:
        args += ["-L", label]
    run(*args, path)
    proto.unlink()
    return path


def vfat(path: Path, size_mib: int, tree: Path | None, *options: str, label: str = "") -> Path:
    sparse(path, size_mib)
    args = ["mkfs.vfat", *options]
    if label:
        args += ["-n", label]
    run(*args, path)
    if tree is not None:
        env_path = path
        for entry in sorted(tree.rglob("*")):
            rel = entry.relative_to(tree).as_posix()
            if entry.is_dir():
                _mtools("mmd", "-i", env_path, f"::/{rel}")
            else:
                _mtools("mcopy", "-i", env_path, entry, f"::/{rel}")
    return path


def _mtools(*cmd: str | Path) -> None:
    done = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    assert done.returncode == 0, f"{cmd[0]} failed: {done.stderr.strip()}"


def luks(path: Path, size_mib: int) -> Path:
    sparse(path, size_mib)
    run(
        "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", "-", path, stdin="not-a-secret",
    )  # fmt: skip
    return path


def btrfs(path: Path, size_mib: int = 120) -> Path:
    sparse(path, size_mib)
    run("mkfs.btrfs", "-q", "-f", path)
    return path


def blkid(path: Path | str, offset: int = 0) -> dict[str, str]:
    """What blkid says of the file system at ``offset`` (UUID, LABEL, TYPE)."""
    out = run("blkid", "-p", "-o", "export", "-O", str(offset), path)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@dataclass
class Part:
    start: int
    size: int
    #: What sfdisk reports (partuuid for GPT and MBR alike).
    uuid: str
    node: str


class Disk:
    """A sparse disk image with a partition table written by sfdisk.

    ``sector=4096``: sfdisk takes the sector size from the device, so the table is written through a
    loop device of 4096-byte sectors (root; nothing is mounted), detached right after."""

    def __init__(self, path: Path, size_mib: int, script: str, sector: int = 512) -> None:
        self.path = sparse(path, size_mib)
        target = str(path)
        if sector != 512:
            target = run("losetup", "--find", "--show", "--sector-size", str(sector), path).strip()
        try:
            run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", target, stdin=script)
            table = json.loads(run("sfdisk", "--json", target))["partitiontable"]
        finally:
            if target != str(path):
                run("losetup", "--detach", target)
        self.sector = table.get("sectorsize", 512)
        assert self.sector == sector
        self.label = table["label"]
        self.id = table.get("id", "")
        self.parts: dict[int, Part] = {}
        for p in table["partitions"]:
            number = int(p["node"][len(target) :].lstrip("p"))
            self.parts[number] = Part(
                p["start"] * self.sector, p["size"] * self.sector, p.get("uuid", ""), p["node"]
            )

    def put(self, number: int, image: Path) -> None:
        """Write a file system image into partition ``number`` (it must fit)."""
        part = self.parts[number]
        assert image.stat().st_size <= part.size, f"{image.name} does not fit partition {number}"
        run(
            "dd", f"if={image}", f"of={self.path}", "bs=1M", f"seek={part.start}", "oflag=seek_bytes",
            "conv=notrunc,sparse", "status=none",
        )  # fmt: skip
        image.unlink()


def _debian_entry(title: str, entry_id: str, uuid: str, device: str, kernel: str, initrd: str, args: str,
                  indent: str = "") -> str:  # fmt: skip
    body = f"""menuentry '{title}' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option '{entry_id}' {{
	load_video
	insmod gzio
	if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
	insmod part_gpt
	insmod ext2
	set root='{device}'
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root --hint-bios={device} --hint-efi={device} --hint-baremetal=ahci0,{device[4:]}  {uuid}
	else
	  search --no-floppy --fs-uuid --set=root {uuid}
	fi
	echo	'Loading Linux {kernel.rsplit("vmlinuz-", 1)[-1]} ...'
	linux	{kernel} {args}
	echo	'Loading initial ramdisk ...'
	initrd	{initrd}
}}
"""  # noqa: E501, E101
    return "".join(indent + line if line.strip() else line for line in body.splitlines(True))


def debian_grub_cfg(
    boot_uuid: str,
    root_uuid: str,
    versions: list[str],
    device: str = "hd0,gpt2",
    boot_prefix: str = "/boot",
    default: str = "0",
    extra_args: str = "quiet",
) -> str:
    """A grub.cfg in the shape Debian 12's grub-mkconfig writes (00_header, 05_debian_theme, 10_linux
    with a simple entry and an "Advanced options" submenu, 30_uefi-firmware, 41_custom).

    ``boot_uuid`` is the file system holding the kernels (the root's, or a separate /boot's, then
    ``boot_prefix=""``); ``default`` is what GRUB_DEFAULT compiles to (``saved`` gives
    ``${saved_entry}``)."""
    default_line = '"${saved_entry}"' if default == "saved" else f'"{default}"'
    search = f"""set root='{device}'
if [ x$feature_platform_search_hint = xy ]; then
  search --no-floppy --fs-uuid --set=root --hint-bios={device} --hint-efi={device} --hint-baremetal=ahci0,{device[4:]}  {boot_uuid}
else
  search --no-floppy --fs-uuid --set=root {boot_uuid}
fi
"""  # noqa: E501
    head = f"""#
# DO NOT EDIT THIS FILE
#
# It is automatically generated by grub-mkconfig using templates
# from /etc/grub.d and settings from /etc/default/grub
#

### BEGIN /etc/grub.d/00_header ###
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${{next_entry}}" ] ; then
   set default="${{next_entry}}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default={default_line}
fi

if [ x"${{feature_menuentry_id}}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi

export menuentry_id_option

if [ "${{prev_saved_entry}}" ]; then
  set saved_entry="${{prev_saved_entry}}"
  save_env saved_entry
  set prev_saved_entry=
  save_env prev_saved_entry
  set boot_once=true
fi

function savedefault {{
  if [ -z "${{boot_once}}" ]; then
    saved_entry="${{chosen}}"
    save_env saved_entry
  fi
}}
function load_video {{
  if [ x$feature_all_video_module = xy ]; then
    insmod all_video
  else
    insmod efi_gop
    insmod efi_uga
    insmod ieee1275_fb
    insmod vbe
    insmod vga
    insmod video_bochs
    insmod video_cirrus
  fi
}}

if [ x$feature_default_font_path = xy ] ; then
   font=unicode
else
insmod part_gpt
insmod ext2
{search}    font="/usr/share/grub/unicode.pf2"
fi

if loadfont $font ; then
  set gfxmode=auto
  load_video
  insmod gfxterm
  set locale_dir=$prefix/locale
  set lang=en_US
  insmod gettext
fi
terminal_output gfxterm
if [ "${{recordfail}}" = 1 ] ; then
  set timeout=30
else
  if [ x$feature_timeout_style = xy ] ; then
    set timeout_style=menu
    set timeout=5
  # Fallback normal timeout code in case the timeout_style feature is
  # unavailable.
  else
    set timeout=5
  fi
fi
### END /etc/grub.d/00_header ###

### BEGIN /etc/grub.d/05_debian_theme ###
insmod part_gpt
insmod ext2
{search}insmod png
if background_image /usr/share/desktop-base/emerald-theme/grub/grub-4x3.png; then
  set color_normal=white/black
  set color_highlight=black/white
else
  set menu_color_normal=cyan/blue
  set menu_color_highlight=white/blue
fi
### END /etc/grub.d/05_debian_theme ###

### BEGIN /etc/grub.d/10_linux ###
function gfxmode {{
	set gfxpayload="${{1}}"
}}
set linux_gfx_mode=
export linux_gfx_mode
"""  # noqa: E501
    args = f"root=UUID={root_uuid} ro  {extra_args}"
    newest = versions[0]
    parts = [head]
    parts.append(
        _debian_entry(
            "Debian GNU/Linux",
            f"gnulinux-simple-{root_uuid}",
            boot_uuid,
            device,
            f"{boot_prefix}/vmlinuz-{newest}",
            f"{boot_prefix}/initrd.img-{newest}",
            args,
        )  # fmt: skip
    )
    parts.append(
        "submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option "
        f"'gnulinux-advanced-{root_uuid}' {{\n"
    )
    for version in versions:
        for suffix, more, tag in (
            ("", args, "advanced"),
            (" (recovery mode)", f"root=UUID={root_uuid} ro single", "recovery"),
        ):
            parts.append(
                _debian_entry(
                    f"Debian GNU/Linux, with Linux {version}{suffix}",
                    f"gnulinux-{version}-{tag}-{root_uuid}",
                    boot_uuid,
                    device,
                    f"{boot_prefix}/vmlinuz-{version}",
                    f"{boot_prefix}/initrd.img-{version}",
                    more,
                    indent="\t",
                )  # fmt: skip
            )
    parts.append("}\n\n### END /etc/grub.d/10_linux ###\n")
    parts.append("""
### BEGIN /etc/grub.d/20_linux_xen ###

### END /etc/grub.d/20_linux_xen ###

### BEGIN /etc/grub.d/30_os-prober ###
### END /etc/grub.d/30_os-prober ###

### BEGIN /etc/grub.d/30_uefi-firmware ###
if [ "$grub_platform" = "efi" ]; then
	fwsetup --is-supported
	if [ "$?" = 0 ]; then
		menuentry 'UEFI Firmware Settings' $menuentry_id_option 'uefi-firmware' {
			fwsetup
		}
	fi
fi
### END /etc/grub.d/30_uefi-firmware ###

### BEGIN /etc/grub.d/40_custom ###
# This file provides an easy way to add custom menu entries.  Simply type the
# menu entries you want to add after this comment.  Be careful not to change
# the 'exec tail' line above.
### END /etc/grub.d/40_custom ###

### BEGIN /etc/grub.d/41_custom ###
if [ -f  ${config_directory}/custom.cfg ]; then
  source ${config_directory}/custom.cfg
elif [ -z "${config_directory}" -a -f  $prefix/custom.cfg ]; then
  source $prefix/custom.cfg
fi
### END /etc/grub.d/41_custom ###
""")
    return "".join(parts)


def grubenv(**values: str) -> bytes:
    """A grubenv block: a header, name=value lines, '#' padding to 1024 bytes."""
    text = "# GRUB Environment Block\n" + "".join(f"{k}={v}\n" for k, v in values.items())
    return (text + "#" * (1024 - len(text))).encode()
