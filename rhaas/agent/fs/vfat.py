"""Reading FAT12, FAT16 and FAT32 (read-only), with long file names: EFI system partitions and the
boot partitions of Boot Loader Specification images.

The FAT type follows from the cluster count, as the specification says (not from the label in the boot
sector). Names are compared without regard to case, as the firmware and Linux's vfat do; a long name
counts only where its checksum matches the short entry it precedes. The whole FAT is read once (a 512 MiB
ESP's is well under a megabyte). Cluster chains are bounded by the file's size and the cluster count, so
a looping chain is an error rather than a hang.
"""

from __future__ import annotations

import stat
import struct

from rhaas.agent.fs.base import FileSystem, FsError, Node, Volume, utf16le

ATTR_VOLUME = 0x08
ATTR_DIR = 0x10
ATTR_LFN = 0x0F
#: NT case flags of a short name: base and extension stored upper-case but shown lower-case.
LOWER_BASE, LOWER_EXT = 0x08, 0x10


class FatNode(Node):
    def __init__(self, mode: int, size: int, cluster: int, root: bool = False) -> None:
        super().__init__(mode, size)
        self.cluster = cluster
        self.root = root


def looks_like_fat(boot: bytes) -> bool:
    """Whether a first sector is a FAT boot sector: the signature and a sane BIOS parameter block."""
    if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
        return False
    bps, spc, reserved, fats = struct.unpack_from("<HBHB", boot, 11)
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or reserved == 0 or fats == 0:
        return False
    return boot[54:57] == b"FAT" or boot[82:85] == b"FAT"


class Vfat(FileSystem):
    fstype = "vfat"

    def __init__(self, volume: Volume) -> None:
        super().__init__(volume)
        boot = volume.read(0, 512)
        if not looks_like_fat(boot):
            raise FsError("not a FAT file system")
        bps, spc, reserved, fats, root_entries, total16, _, fat16 = struct.unpack_from("<HBHBHHBH", boot, 11)
        total32, fat32 = struct.unpack_from("<II", boot, 32)
        fat_sectors = fat16 or fat32
        total = total16 or total32
        root_sectors = (root_entries * 32 + bps - 1) // bps
        self.cluster_size = bps * spc
        self.fat_offset = reserved * bps
        self.root_offset = (reserved + fats * fat_sectors) * bps
        self.root_size = root_entries * 32
        self.data_offset = self.root_offset + root_sectors * bps
        data_sectors = total - (reserved + fats * fat_sectors + root_sectors)
        if data_sectors <= 0:
            raise FsError("vfat: corrupt boot sector (no data area)")
        self.clusters = data_sectors // spc
        self.fat_bytes = fat_sectors * bps
        if self.clusters < 4085:
            self.bits = 12
        elif self.clusters < 65525:
            self.bits = 16
        else:
            self.bits = 32
        if self.bits == 32:
            self.root_cluster = struct.unpack_from("<I", boot, 44)[0]
            serial_at, label_at = 67, 71
        else:
            self.root_cluster = 0
            serial_at, label_at = 39, 43
        serial = struct.unpack_from("<I", boot, serial_at)[0]
        self.uuid = f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"
        self.label = _label(boot[label_at : label_at + 11])
        self._fat: bytes | None = None
        root_label = self._volume_label()
        if root_label is not None:
            self.label = root_label

    # Clusters.
    def _next(self, cluster: int) -> int | None:
        """The cluster after ``cluster`` in its chain, None at the end of the chain."""
        if self._fat is None:
            self._fat = self.volume.read(self.fat_offset, self.fat_bytes)
        fat = self._fat
        if self.bits == 12:
            pair = struct.unpack_from("<H", fat, cluster + cluster // 2)[0]
            value = pair >> 4 if cluster & 1 else pair & 0xFFF
            end = value >= 0xFF8
        elif self.bits == 16:
            value = struct.unpack_from("<H", fat, cluster * 2)[0]
            end = value >= 0xFFF8
        else:
            value = struct.unpack_from("<I", fat, cluster * 4)[0] & 0x0FFFFFFF
            end = value >= 0x0FFFFFF8
        if end:
            return None
        if not 2 <= value < self.clusters + 2:
            raise FsError(f"vfat: corrupt cluster chain (cluster {cluster} points to {value})")
        return value

    def _chain(self, first: int, max_clusters: int) -> list[tuple[int, int]]:
        """(cluster, count) runs of a chain, at most ``max_clusters`` clusters long."""
        runs: list[tuple[int, int]] = []
        cluster: int | None = first
        seen = 0
        while cluster is not None and seen < max_clusters:
            if not 2 <= cluster < self.clusters + 2:
                raise FsError(f"vfat: corrupt cluster number {cluster}")
            if runs and runs[-1][0] + runs[-1][1] == cluster:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((cluster, 1))
            seen += 1
            cluster = self._next(cluster)
        return runs

    def _cluster_offset(self, cluster: int) -> int:
        return self.data_offset + (cluster - 2) * self.cluster_size

    def _data(self, node: FatNode, limit: int) -> bytes:
        if node.root and self.bits != 32:
            return self.volume.read(self.root_offset, self.root_size)
        if node.is_dir:
            size = self.clusters * self.cluster_size  # a directory's size is its chain's length
            max_clusters = min(self.clusters, limit // self.cluster_size + 1)
        else:
            size = node.size
            max_clusters = -(-size // self.cluster_size)
        if node.cluster == 0 or size == 0:
            return b""
        runs = self._chain(node.cluster, max_clusters)
        got = sum(count for _, count in runs) * self.cluster_size
        if not node.is_dir and got < size:
            raise FsError(f"vfat: a file of {size} bytes has a chain of only {got} bytes")
        out = bytearray(min(size, got))
        view = memoryview(out)
        pos = 0
        for cluster, count in runs:
            n = min(count * self.cluster_size, len(out) - pos)
            self.volume.read_into(self._cluster_offset(cluster), view[pos : pos + n])
            pos += n
        return bytes(out)

    # Directories.
    def _dirents(self, directory: FatNode) -> list[tuple[str, FatNode]]:
        data = self._data(directory, 64 << 20)
        entries: list[tuple[str, FatNode]] = []
        long_parts: dict[int, str] = {}
        long_sum = -1
        for pos in range(0, len(data) - 31, 32):
            raw = data[pos : pos + 32]
            first, attr = raw[0], raw[11]
            if first == 0:
                break
            if first == 0xE5:
                long_parts, long_sum = {}, -1
                continue
            if attr & 0x3F == ATTR_LFN:
                order = first & 0x1F
                if first & 0x40:
                    long_parts, long_sum = {}, raw[13]
                long_parts[order] = utf16le(raw[1:11] + raw[14:26] + raw[28:32]).split("\uffff", 1)[0]
                continue
            if attr & ATTR_VOLUME:
                long_parts, long_sum = {}, -1
                continue
            short = raw[:11]
            if first == 0x05:
                short = b"\xe5" + short[1:]
            name = None
            if long_parts and long_sum == _checksum(raw[:11]):
                name = "".join(long_parts[k] for k in sorted(long_parts))
            long_parts, long_sum = {}, -1
            if name is None:
                name = _short_name(short, raw[12])
            if name in (".", ".."):
                continue
            hi, lo, size = struct.unpack_from("<H4xHI", raw, 20)
            cluster = lo | (hi << 16 if self.bits == 32 else 0)
            mode = (stat.S_IFDIR | 0o755) if attr & ATTR_DIR else (stat.S_IFREG | 0o644)
            entries.append((name, FatNode(mode, 0 if attr & ATTR_DIR else size, cluster)))
        return entries

    def _volume_label(self) -> str | None:
        """The label in the root directory, which blkid prefers to the boot sector's copy."""
        root = self._root()
        data = self._data(root, self.cluster_size)[: 64 * 32]
        for pos in range(0, len(data) - 31, 32):
            raw = data[pos : pos + 32]
            if raw[0] == 0:
                break
            if raw[0] != 0xE5 and raw[11] & 0x3F != ATTR_LFN and raw[11] & ATTR_VOLUME:
                return _label(raw[:11])
        return None

    # FileSystem.
    def _root(self) -> FatNode:
        return FatNode(stat.S_IFDIR | 0o755, 0, self.root_cluster, root=True)

    def _names(self, directory: Node) -> list[str]:
        assert isinstance(directory, FatNode)
        return [name for name, _ in self._dirents(directory)]

    def _lookup(self, directory: Node, name: str) -> Node | None:
        assert isinstance(directory, FatNode)
        folded = name.casefold()
        for entry, node in self._dirents(directory):
            if entry.casefold() == folded:
                return node
        return None

    def _read(self, node: Node, limit: int) -> bytes:
        assert isinstance(node, FatNode)
        return self._data(node, limit)


def _checksum(short: bytes) -> int:
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _short_name(short: bytes, case: int) -> str:
    """An 8.3 name, decoded as Latin-1 rather than its OEM code page (cp437 is a codec module the FPBL
    does not ship): boot files have ASCII names, and a long name, where there is one, is what counts."""
    base = short[:8].rstrip(b" ").decode("latin-1")
    ext = short[8:11].rstrip(b" ").decode("latin-1")
    if case & LOWER_BASE:
        base = base.lower()
    if case & LOWER_EXT:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def _label(raw: bytes) -> str:
    label = raw.rstrip(b" \0").decode("latin-1")
    return "" if label == "NO NAME" else label
