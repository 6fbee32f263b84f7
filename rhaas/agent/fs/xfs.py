"""Reading XFS (read-only): the superblock, inodes found by number, extent and btree data forks,
short-form, block, leaf and node directories, and symbolic links.

No inode btree is needed: an inode number says where the inode is (allocation group, block, slot).
Directories are read from their data blocks only (the leaf and free-space blocks past
`LEAF_OFFSET` index them for lookups by hash, which a linear scan does not need). Both v5 (CRC) and
v4 layouts are read, since they differ only in header sizes; checksums are not verified. The log is not
replayed (see `rhaas.agent.fs.ext4` for why that is acceptable for a written image).
"""

from __future__ import annotations

import stat
import struct

from rhaas.agent.fs.base import FileSystem, FsError, Node, Volume, format_uuid

INCOMPAT_FTYPE = 0x1
VERSION_MASK = 0xF
VERSION_FTYPE_V4 = 0x200  # sb_features2: XFS_SB_VERSION2_FTYPE

FMT_LOCAL, FMT_EXTENTS, FMT_BTREE = 1, 2, 3
DIFLAG2_NREXT64 = 1 << 4
#: Directory data lives below this byte offset of a directory (32 GiB); leaf and free blocks above it.
LEAF_OFFSET = 32 << 30
MAX_DEPTH = 8


class XfsInode(Node):
    def __init__(self, ino: int, raw: bytes, data_fork: bytes) -> None:
        magic, mode, version, fmt = struct.unpack_from(">2sHBB", raw, 0)
        if magic != b"IN":
            raise FsError(f"xfs: inode {ino} is corrupt (bad magic)")
        super().__init__(mode, struct.unpack_from(">Q", raw, 56)[0])
        self.ino = ino
        self.version = version
        self.format = fmt
        nextents = struct.unpack_from(">I", raw, 76)[0]
        if version >= 3 and struct.unpack_from(">Q", raw, 120)[0] & DIFLAG2_NREXT64:
            nextents = struct.unpack_from(">Q", raw, 24)[0]
        self.nextents = nextents
        self.fork = data_fork


class Xfs(FileSystem):
    fstype = "xfs"

    def __init__(self, volume: Volume) -> None:
        super().__init__(volume)
        sb = volume.read(0, 512)
        if sb[0:4] != b"XFSB":
            raise FsError("not an XFS file system (bad magic)")
        self.block_size = struct.unpack_from(">I", sb, 4)[0]
        self.uuid = format_uuid(sb[32:48])
        self.root_ino = struct.unpack_from(">Q", sb, 56)[0]
        self.ag_blocks = struct.unpack_from(">I", sb, 84)[0]
        versionnum = struct.unpack_from(">H", sb, 100)[0]
        self.version = versionnum & VERSION_MASK
        self.inode_size = struct.unpack_from(">H", sb, 104)[0]
        self.label = sb[108:120].split(b"\0", 1)[0].decode("utf-8", "replace")
        self.block_log, _, _, self.inop_block_log, self.ag_block_log = struct.unpack_from(">5B", sb, 120)
        self.dir_block_log = sb[192]
        features2 = struct.unpack_from(">I", sb, 200)[0]
        incompat = struct.unpack_from(">I", sb, 216)[0] if self.version == 5 else 0
        self.ftype = bool(incompat & INCOMPAT_FTYPE) or bool(features2 & VERSION_FTYPE_V4)
        if self.version not in (4, 5):
            raise FsError(f"xfs: superblock version {self.version} is not supported")
        if self.block_size != 1 << self.block_log or not 512 <= self.block_size <= 65536:
            raise FsError("xfs: corrupt superblock (block size)")
        self.dir_block_size = self.block_size << self.dir_block_log
        #: Size of the inode core before the data fork: v3 inodes (v5 file systems) carry more.
        self.core_size = 176 if self.version == 5 else 100

    # Layout.
    def _fsb_offset(self, fsb: int) -> int:
        """Byte offset of a file system block number (AG number in the high bits)."""
        ag = fsb >> self.ag_block_log
        agb = fsb & ((1 << self.ag_block_log) - 1)
        return (ag * self.ag_blocks + agb) * self.block_size

    def inode(self, ino: int) -> XfsInode:
        slot_bits = self.inop_block_log
        agb_bits = self.ag_block_log
        ag = ino >> (agb_bits + slot_bits)
        agb = (ino >> slot_bits) & ((1 << agb_bits) - 1)
        slot = ino & ((1 << slot_bits) - 1)
        pos = (ag * self.ag_blocks + agb) * self.block_size + slot * self.inode_size
        raw = self.volume.read(pos, self.inode_size)
        version = raw[4]
        core = 176 if version >= 3 else 100
        forkoff = raw[82]
        end = core + forkoff * 8 if forkoff else self.inode_size
        return XfsInode(ino, raw, raw[core:end])

    def _extents(self, inode: XfsInode) -> list[tuple[int, int, int, bool]]:
        """(file block, file system block, count, unwritten) of a data fork, in file order."""
        out: list[tuple[int, int, int, bool]] = []
        if inode.format == FMT_EXTENTS:
            if inode.nextents * 16 > len(inode.fork):
                raise FsError(f"xfs: inode {inode.ino} is corrupt (extent count)")
            _records(inode.fork, 0, inode.nextents, out)
        elif inode.format == FMT_BTREE:
            level, numrecs = struct.unpack_from(">HH", inode.fork, 0)
            maxrecs = (len(inode.fork) - 4) // 16
            if numrecs > maxrecs or level > MAX_DEPTH:
                raise FsError(f"xfs: inode {inode.ino} is corrupt (btree root)")
            for i in range(numrecs):
                ptr = struct.unpack_from(">Q", inode.fork, 4 + maxrecs * 8 + i * 8)[0]
                self._btree_block(ptr, level - 1, out)
        else:
            raise FsError(f"xfs: inode {inode.ino} has no extents (format {inode.format})")
        out.sort()
        return out

    def _btree_block(self, fsb: int, level: int, out: list[tuple[int, int, int, bool]]) -> None:
        block = self.volume.read(self._fsb_offset(fsb), self.block_size)
        magic = block[0:4]
        if magic == b"BMA3":
            header = 72
        elif magic == b"BMAP":
            header = 24
        else:
            raise FsError("xfs: corrupt extent btree block")
        got_level, numrecs = struct.unpack_from(">HH", block, 4)
        if got_level != level or level < 0:
            raise FsError("xfs: corrupt extent btree (levels)")
        if level == 0:
            if header + numrecs * 16 > len(block):
                raise FsError("xfs: corrupt extent btree leaf")
            _records(block, header, numrecs, out)
            return
        maxrecs = (self.block_size - header) // 16
        if numrecs > maxrecs:
            raise FsError("xfs: corrupt extent btree node")
        for i in range(numrecs):
            ptr = struct.unpack_from(">Q", block, header + maxrecs * 8 + i * 8)[0]
            self._btree_block(ptr, level - 1, out)

    def _data(self, inode: XfsInode, limit: int) -> bytes:
        size = inode.size
        if size > limit:
            raise FsError(f"xfs: inode {inode.ino} has {size} bytes, more than the {limit} allowed")
        if inode.format == FMT_LOCAL:
            return inode.fork[:size]
        runs = [(logical, self._fsb_offset(fsb), count, unwritten)
                for logical, fsb, count, unwritten in self._extents(inode)]  # fmt: skip
        return self.volume.read_runs(size, self.block_size, runs)

    # FileSystem.
    def _root(self) -> Node:
        return self.inode(self.root_ino)

    def _read(self, node: Node, limit: int) -> bytes:
        assert isinstance(node, XfsInode)
        return self._data(node, limit)

    def _readlink(self, node: Node) -> str:
        assert isinstance(node, XfsInode)
        if node.format == FMT_LOCAL:
            target = node.fork[: node.size]
        else:
            # Remote link blocks: each carries a 56-byte header on v5 ("XSLM").
            parts = []
            for _, fsb, count, _ in self._extents(node):
                for i in range(count):
                    block = self.volume.read(self._fsb_offset(fsb + i), self.block_size)
                    if block[0:4] == b"XSLM":
                        nbytes = struct.unpack_from(">I", block, 8)[0]
                        parts.append(block[56 : 56 + nbytes])
                    else:
                        parts.append(block)
            target = b"".join(parts)[: node.size]
        return target.decode("utf-8", "surrogateescape")

    def _names(self, directory: Node) -> list[str]:
        assert isinstance(directory, XfsInode)
        return [name for name, _ in self._dirents(directory)]

    def _lookup(self, directory: Node, name: str) -> Node | None:
        assert isinstance(directory, XfsInode)
        for entry, ino in self._dirents(directory):
            if entry == name:
                return self.inode(ino)
        return None

    def _dirents(self, directory: XfsInode) -> list[tuple[str, int]]:
        if not stat.S_ISDIR(directory.mode):
            raise FsError(f"xfs: inode {directory.ino} is not a directory")
        if directory.format == FMT_LOCAL:
            return self._shortform(directory.fork)
        entries: list[tuple[str, int]] = []
        bs = self.block_size
        per_dir_block = self.dir_block_size // bs
        for logical, fsb, count, _ in self._extents(directory):
            # Walk the extent one directory block at a time; data blocks only.
            first = -(-logical // per_dir_block) * per_dir_block
            for block_no in range(first, logical + count, per_dir_block):
                if block_no * bs >= LEAF_OFFSET or block_no + per_dir_block > logical + count:
                    break
                pos = self._fsb_offset(fsb + block_no - logical)
                entries.extend(self._data_block(self.volume.read(pos, self.dir_block_size)))
        return entries

    def _shortform(self, fork: bytes) -> list[tuple[str, int]]:
        count, i8count = fork[0], fork[1]
        ino_size = 8 if i8count else 4
        pos = 2 + ino_size
        entries = []
        for _ in range(count):
            if pos >= len(fork):
                raise FsError("xfs: corrupt short-form directory")
            name_len = fork[pos]
            name = fork[pos + 3 : pos + 3 + name_len]
            pos += 3 + name_len + (1 if self.ftype else 0)
            ino = int.from_bytes(fork[pos : pos + ino_size], "big")
            pos += ino_size
            entries.append((name.decode("utf-8", "surrogateescape"), ino))
        return entries

    def _data_block(self, block: bytes) -> list[tuple[str, int]]:
        magic = block[0:4]
        if magic in (b"XDB3", b"XDD3"):
            header = 64
        elif magic in (b"XD2B", b"XD2D"):
            header = 16
        else:
            return []  # not a data block (a hole or a corrupt block): nothing to list here
        end = len(block)
        if magic in (b"XDB3", b"XD2B"):
            # A single-block directory keeps its leaf entries and a tail at the end of the block.
            leaf_count = struct.unpack_from(">I", block, end - 8)[0]
            end -= 8 + leaf_count * 8
        entries = []
        pos = header
        while pos + 8 <= end:
            if block[pos : pos + 2] == b"\xff\xff":  # an unused region: its length follows the tag
                length = struct.unpack_from(">H", block, pos + 2)[0]
                if length < 8 or length % 8:
                    break
                pos += length
                continue
            ino = struct.unpack_from(">Q", block, pos)[0]
            name_len = block[pos + 8]
            name = block[pos + 9 : pos + 9 + name_len]
            size = (8 + 1 + name_len + (1 if self.ftype else 0) + 2 + 7) & ~7
            if name_len == 0:
                break
            if name not in (b".", b".."):
                entries.append((name.decode("utf-8", "surrogateescape"), ino))
            pos += size
        return entries


def _records(raw: bytes, pos: int, count: int, out: list[tuple[int, int, int, bool]]) -> None:
    """Unpack packed 128-bit extent records: flag:1, file offset:54, block:52, count:21."""
    for i in range(count):
        hi, lo = struct.unpack_from(">QQ", raw, pos + i * 16)
        unwritten = bool(hi >> 63)
        logical = (hi >> 9) & ((1 << 54) - 1)
        fsb = ((hi & 0x1FF) << 43) | (lo >> 21)
        blocks = lo & ((1 << 21) - 1)
        out.append((logical, fsb, blocks, unwritten))
