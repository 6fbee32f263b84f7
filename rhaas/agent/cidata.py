"""A deployed image's cloud-init seed: a NoCloud ``CIDATA`` volume at the disk's end (standard library only).

After writing a customer's whole-disk cloud image, the agent adds a small partition at the disk's end
(`rhaas.agent.partedit`) holding a VFAT file system (`rhaas.agent.vfat`) labelled ``CIDATA`` with the
files cloud-init's NoCloud data source reads, so that an unmodified cloud image configures itself:

- ``meta-data``: ``instance-id`` (the caller's, e.g. the deploy job's id: cloud-init runs its
  once-per-instance steps again when it changes), ``local-hostname`` (the node's name), and the
  customer's SSH keys as ``public-keys``; JSON, which cloud-init's YAML reader takes as YAML;
- ``user-data``: the customer's, byte for byte; without one, a ``#cloud-config`` holding the SSH keys
  (`user_data_for`);
- ``network-config`` only if the customer gave one; without it cloud-init falls back to DHCP on one
  interface: the first with a carrier (``eth0`` first), else, as before the network is up, the first that
  is down, by name (docs/fast-provisioning.md, "The cloud-init seed");
- ``vendor-data`` if the operator gives one.

Why the keys go into ``public-keys``: cloud-init's ``ssh`` module authorises the data source's public keys
(``public-keys`` in NoCloud's meta-data) *plus* the ``ssh_authorized_keys`` of the merged cloud-config,
for the image's default user. So the keys work whatever the customer's own user-data says. Keys put into
vendor-data instead would be lost when the user-data has ``ssh_authorized_keys`` of its own (user-data
overrides vendor-data key by key) or turns vendor-data off.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from rhaas.agent import partedit, vfat

#: The volume label cloud-init's NoCloud source (and its ds-identify) looks for: ``cidata`` or ``CIDATA``.
LABEL = "CIDATA"
#: The GPT partition name of the seed partition.
PARTITION_NAME = "cidata"
MIB = 1 << 20
#: The smallest seed volume, and the most the seed's files may hold together.
MIN_VOLUME = MIB
MAX_SEED_BYTES = 16 * MIB
#: Room for the file system's own structures (boot sector, two FATs, root directory) and cluster slack.
_OVERHEAD = 256 << 10


class SeedError(RuntimeError):
    """The seed cannot be written: bad values, too large, or the disk has no place for it."""


class Seed(NamedTuple):
    """What cloud-init in the deployed image is told."""

    instance_id: str
    hostname: str
    user_data: bytes | None = None
    ssh_keys: tuple[str, ...] = ()
    network_config: bytes | None = None
    vendor_data: bytes | None = None


def meta_data(seed: Seed) -> bytes:
    """NoCloud's ``meta-data`` for `seed`: instance id, host name and SSH keys, as JSON (which is YAML)."""
    data: dict[str, object] = {"instance-id": seed.instance_id, "local-hostname": seed.hostname}
    if seed.ssh_keys:
        data["public-keys"] = list(seed.ssh_keys)
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def user_data_for(ssh_keys: Sequence[str], user_data: bytes | None) -> bytes:
    """The ``user-data`` file: the customer's as given, else a ``#cloud-config`` with `ssh_keys`.

    The keys also travel in the meta-data (see the module's doc), which works next to any user-data; the
    cloud-config without user-data says the same thing where a reader of the instance's user-data looks,
    and still works in an image whose cloud.cfg turns ``allow_public_ssh_keys`` off.
    """
    if user_data is not None:
        return user_data
    text = "#cloud-config\n"
    if ssh_keys:
        text += "ssh_authorized_keys: " + json.dumps(list(ssh_keys), ensure_ascii=False) + "\n"
    return text.encode()


def seed_files(seed: Seed) -> list[tuple[str, bytes]]:
    """The files of the seed volume, in the order they are written. Raises `SeedError` on bad values."""
    for what, value in (("instance-id", seed.instance_id), ("hostname", seed.hostname)):
        if not value or not value.isprintable() or value != value.strip():
            raise SeedError(f"the seed's {what} {value!r} must be printable text without outer spaces")
    for key in seed.ssh_keys:
        if not key.strip() or "\n" in key or "\r" in key:
            raise SeedError("an SSH key must be one non-empty line")
    files = [("meta-data", meta_data(seed)), ("user-data", user_data_for(seed.ssh_keys, seed.user_data))]
    if seed.network_config is not None:
        files.append(("network-config", seed.network_config))
    if seed.vendor_data is not None:
        files.append(("vendor-data", seed.vendor_data))
    total = sum(len(data) for _, data in files)
    if total > MAX_SEED_BYTES:
        raise SeedError(f"the seed's files hold {total} bytes; at most {MAX_SEED_BYTES} fit")
    return files


def volume_size(files: Sequence[tuple[str, bytes]]) -> int:
    """The seed volume's size: whole MiB, at least `MIN_VOLUME`, with room for the files and FAT's own."""
    needed = sum(-(-len(data) // 4096) * 4096 for _, data in files) + _OVERHEAD
    return max(MIN_VOLUME, -(-needed // MIB) * MIB)


def write_seed(disk_path: str, disk_size: int, sector_size: int, seed: Seed) -> dict[str, object]:
    """Add the ``CIDATA`` partition with `seed`'s files at the end of the disk at `disk_path`.

    `disk_size` is in bytes and `sector_size` is the disk's logical sector size. Returns what was done
    (table, partition number, start and size in bytes, files and their sizes) for the deploy's report.
    Raises `SeedError`, having written nothing, if the seed is not valid or the disk has no partition
    table, no room after its last partition or no free slot; `OSError` if the disk cannot be read or
    written.
    """
    files = seed_files(seed)
    size = volume_size(files)
    try:
        # Its "hidden sectors" stay 0, as mkfs.fat leaves them in a file: only boot code reads them.
        volume = vfat.build(size, LABEL, files, sector_size=sector_size)
        added = partedit.add_partition(
            disk_path, disk_size, sector_size, volume, name=PARTITION_NAME, seed=volume[39:43]
        )
    except (vfat.VfatError, partedit.PartitionError) as exc:
        raise SeedError(f"cannot write the cloud-init seed: {exc}") from exc
    return {
        "table": added.table,
        "partition": added.number,
        "start": added.start,
        "size": added.size,
        "guid": added.guid,
        "backup_moved": added.backup_moved,
        "label": LABEL,
        "files": {name: len(data) for name, data in files},
    }
