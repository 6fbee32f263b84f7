"""Reading ext2/3/4 (read-only): superblock, group descriptors, inodes, extents and block maps,
directories, symbolic links and simple inline data.

Only what finding and reading a kernel needs, and nothing that trusts the image more than it must: every
block number is checked against the volume (`Volume.read`), extent trees and block maps are walked with
depth limits, and a directory block whose records do not add up ends that block's listing. The journal is
not replayed: an image written by a tool or a clean shutdown has none pending, and one that has
(``needs_recovery``) is read as it is, which at worst shows slightly older metadata. htree directories
are read as plain linear directories (their index blocks look like empty records), which every ext4
directory also is. Encrypted files are refused rather than read as garbage.
"""

from __future__ import annotations

import struct

from rhaas.agent.fs.base import FileSystem, FsError, Node, Volume, format_uuid

MAGIC = 0xEF53
SUPERBLOCK = 1024

INCOMPAT_FILETYPE = 0x2
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
RO_COMPAT_SPARSE_SUPER = 0x1

FLAG_ENCRYPT = 0x800
FLAG_EXTENTS = 0x80000
FLAG_INLINE_DATA = 0x10000000

EXTENT_MAGIC = 0xF30A
#: Deeper extent trees or block maps than this are corrupt (ext4 allows depth 5).
MAX_DEPTH = 8
ROOT_INO = 2
#: Largest directory read (a corrupt size must not make the FPBL allocate gigabytes).
MAX_DIRECTORY = 64 << 20
#: The "system." namespace of extended attributes, which holds inline data as "system.data".
XATTR_SYSTEM = 7
XATTR_MAGIC = 0xEA020000


class Inode(Node):
    def __init__(self, ino: int, raw: bytes) -> None:
        mode, size_lo = struct.unpack_from("<H2xI", raw, 0)
        size_hi = struct.unpack_from("<I", raw, 0x6C)[0]
        super().__init__(mode, size_lo | (size_hi << 32))
        self.ino = ino
        self.raw = raw
        self.blocks = struct.unpack_from("<I", raw, 0x1C)[0]
        self.flags = struct.unpack_from("<I", raw, 0x20)[0]
        self.file_acl = struct.unpack_from("<I", raw, 0x68)[0]
        self.i_block = raw[0x28 : 0x28 + 60]


class Ext4(FileSystem):
    fstype = "ext4"

    def __init__(self, volume: Volume) -> None:
        super().__init__(volume)
        sb = volume.read(SUPERBLOCK, 1024)
        (self.inodes_count, blocks_lo, _, _, _, self.first_data_block, log_block) = struct.unpack_from(
            "<7I", sb, 0
        )
        if struct.unpack_from("<H", sb, 56)[0] != MAGIC:
            raise FsError("not an ext2/3/4 file system (bad magic)")
        if log_block > 6:
            raise FsError(f"ext4: block size 2^{10 + log_block} is not supported")
        self.block_size = 1024 << log_block
        self.blocks_per_group = struct.unpack_from("<I", sb, 32)[0]
        self.inodes_per_group = struct.unpack_from("<I", sb, 40)[0]
        rev = struct.unpack_from("<I", sb, 76)[0]
        self.inode_size = struct.unpack_from("<H", sb, 88)[0] if rev >= 1 else 128
        self.incompat = struct.unpack_from("<I", sb, 96)[0]
        self.ro_compat = struct.unpack_from("<I", sb, 100)[0]
        self.uuid = format_uuid(sb[104:120])
        self.label = sb[120:136].split(b"\0", 1)[0].decode("utf-8", "replace")
        if self.incompat & INCOMPAT_JOURNAL_DEV:
            raise FsError("ext4: this is an external journal, not a file system")
        blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if self.incompat & INCOMPAT_64BIT else 0
        self.blocks_count = blocks_lo | (blocks_hi << 32)
        desc_size = struct.unpack_from("<H", sb, 254)[0]
        self.desc_size = desc_size if self.incompat & INCOMPAT_64BIT and desc_size >= 64 else 32
        self.first_meta_bg = struct.unpack_from("<I", sb, 0x104)[0]
        if not (self.inodes_per_group and self.blocks_per_group and self.inode_size >= 128):
            raise FsError("ext4: corrupt superblock (zero group sizes)")
        self.groups = -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)
        self._tables: dict[int, int] = {}

    # Layout.
    def _block(self, n: int, count: int = 1) -> bytes:
        return self.volume.read(n * self.block_size, count * self.block_size)

    def _has_super(self, group: int) -> bool:
        if group <= 1 or not self.ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False

    def _descriptor_block(self, group: int) -> tuple[int, int]:
        """(block, byte offset in it) of a group's descriptor."""
        per_block = self.block_size // self.desc_size
        meta = group // per_block
        if self.incompat & INCOMPAT_META_BG and meta >= self.first_meta_bg:
            first = meta * per_block
            block = self.first_data_block + first * self.blocks_per_group + int(self._has_super(first))
            return block, (group % per_block) * self.desc_size
        return self.first_data_block + 1 + meta, (group % per_block) * self.desc_size

    def _inode_table(self, group: int) -> int:
        table = self._tables.get(group)
        if table is None:
            if group >= self.groups:
                raise FsError(f"ext4: group {group} does not exist")
            block, off = self._descriptor_block(group)
            desc = self._block(block)[off : off + self.desc_size]
            table = struct.unpack_from("<I", desc, 8)[0]
            if self.desc_size >= 64:
                table |= struct.unpack_from("<I", desc, 0x28)[0] << 32
            self._tables[group] = table
        return table

    def inode(self, ino: int) -> Inode:
        if not 1 <= ino <= self.inodes_count:
            raise FsError(f"ext4: inode {ino} out of range")
        group, index = divmod(ino - 1, self.inodes_per_group)
        pos = self._inode_table(group) * self.block_size + index * self.inode_size
        return Inode(ino, self.volume.read(pos, self.inode_size))

    # Data.
    def _runs(self, inode: Inode) -> list[tuple[int, int, int, bool]]:
        """(logical block, physical block, count, unwritten) runs of a file's data, in logical order."""
        runs: list[tuple[int, int, int, bool]] = []
        if inode.flags & FLAG_EXTENTS:
            self._extent_node(inode.i_block, runs, 0)
        else:
            self._block_map(inode, runs)
        runs.sort()
        return runs

    def _extent_node(self, raw: bytes, runs: list[tuple[int, int, int, bool]], level: int) -> None:
        magic, entries, _, depth = struct.unpack_from("<4H", raw, 0)
        if magic != EXTENT_MAGIC or level > MAX_DEPTH or 12 + entries * 12 > len(raw):
            raise FsError("ext4: corrupt extent tree")
        for i in range(entries):
            off = 12 + i * 12
            if depth == 0:
                logical, length, start_hi, start_lo = struct.unpack_from("<IHHI", raw, off)
                unwritten = length > 32768
                if unwritten:
                    length -= 32768
                runs.append((logical, start_lo | (start_hi << 32), length, unwritten))
            else:
                _, leaf_lo, leaf_hi = struct.unpack_from("<IIH", raw, off)
                self._extent_node(self._block(leaf_lo | (leaf_hi << 32)), runs, level + 1)

    def _block_map(self, inode: Inode, runs: list[tuple[int, int, int, bool]]) -> None:
        per_block = self.block_size // 4
        limit = -(-inode.size // self.block_size)
        pointers = struct.unpack_from("<15I", inode.i_block, 0)
        logical = 0

        def add(physical: int) -> None:
            nonlocal logical
            if physical:
                last = runs[-1] if runs else None
                if last and last[0] + last[2] == logical and last[1] + last[2] == physical:
                    runs[-1] = (last[0], last[1], last[2] + 1, False)
                else:
                    runs.append((logical, physical, 1, False))
            logical += 1

        def walk(block: int, depth: int) -> None:
            nonlocal logical
            span = per_block**depth
            if not block:
                logical += span
                return
            for ptr in struct.unpack(f"<{per_block}I", self._block(block)):
                if logical >= limit:
                    return
                if depth == 1:
                    add(ptr)
                else:
                    walk(ptr, depth - 1)

        for ptr in pointers[:12]:
            if logical >= limit:
                return
            add(ptr)
        for depth, ptr in zip((1, 2, 3), pointers[12:], strict=True):
            if logical >= limit:
                return
            walk(ptr, depth)

    def _data(self, inode: Inode, limit: int) -> bytes:
        if inode.flags & FLAG_ENCRYPT:
            raise FsError(f"ext4: inode {inode.ino} is encrypted")
        size = inode.size
        if size > limit:
            raise FsError(f"ext4: inode {inode.ino} has {size} bytes, more than the {limit} allowed")
        if inode.flags & FLAG_INLINE_DATA:
            return self._inline(inode)[:size]
        bs = self.block_size
        runs = [
            (logical, physical * bs, count, unwritten)
            for logical, physical, count, unwritten in self._runs(inode)
        ]
        return self.volume.read_runs(size, bs, runs)

    def _inline(self, inode: Inode) -> bytes:
        """Inline data: the first 60 bytes in i_block, the rest in the in-inode "system.data" attribute."""
        data = inode.i_block
        raw = inode.raw
        if len(raw) > 128:
            extra = struct.unpack_from("<H", raw, 0x80)[0]
            base = 128 + extra
            if base + 4 <= len(raw) and struct.unpack_from("<I", raw, base)[0] == XATTR_MAGIC:
                first = base + 4
                pos = first
                while pos + 16 <= len(raw):
                    name_len, index, value_off, _, value_size = struct.unpack_from("<BBHII", raw, pos)
                    if name_len == 0 and index == 0:
                        break
                    name = raw[pos + 16 : pos + 16 + name_len]
                    if index == XATTR_SYSTEM and name == b"data":
                        data += raw[first + value_off : first + value_off + value_size]
                        break
                    pos += (16 + name_len + 3) & ~3
        return data

    # FileSystem.
    def _root(self) -> Node:
        return self.inode(ROOT_INO)

    def _read(self, node: Node, limit: int) -> bytes:
        assert isinstance(node, Inode)
        return self._data(node, limit)

    def _readlink(self, node: Node) -> str:
        assert isinstance(node, Inode)
        ea_blocks = (self.block_size >> 9) if node.file_acl else 0
        if (
            not node.flags & (FLAG_EXTENTS | FLAG_INLINE_DATA)
            and node.size < 60
            and node.blocks - ea_blocks == 0
        ):
            target = node.i_block[: node.size]
        else:
            target = self._data(node, 4096)
        return target.decode("utf-8", "surrogateescape")

    def _names(self, directory: Node) -> list[str]:
        assert isinstance(directory, Inode)
        return [name for name, _ in self._dirents(directory) if name not in (".", "..")]

    def _lookup(self, directory: Node, name: str) -> Node | None:
        assert isinstance(directory, Inode)
        for entry, ino in self._dirents(directory):
            if entry == name:
                return self.inode(ino)
        return None

    def _dirents(self, directory: Inode) -> list[tuple[str, int]]:
        name_len_16 = not self.incompat & INCOMPAT_FILETYPE
        if directory.flags & FLAG_INLINE_DATA:
            data = self._inline(directory)
            entries = [("..", struct.unpack_from("<I", data, 0)[0])]
            blocks = [data[4:60], data[60:]]
        else:
            data = self._data(directory, MAX_DIRECTORY)
            bs = self.block_size
            entries = []
            blocks = [data[i : i + bs] for i in range(0, len(data), bs)]
        for block in blocks:
            pos = 0
            while pos + 8 <= len(block):
                ino, rec_len, name_len, _ = struct.unpack_from("<IHBB", block, pos)
                if name_len_16:
                    name_len = struct.unpack_from("<H", block, pos + 6)[0]
                if rec_len in (0, 65535) and self.block_size == 65536:
                    rec_len = 65536
                if rec_len < 8 or pos + rec_len > len(block) or 8 + name_len > rec_len:
                    break  # a corrupt record ends this block, not the listing
                if ino:
                    name = block[pos + 8 : pos + 8 + name_len].decode("utf-8", "surrogateescape")
                    entries.append((name, ino))
                pos += rec_len
        return entries
