"""A whole-disk image as the agent writes it: its data extents, one verified chunk each (standard library
only).

The image store keeps a whole-disk image as the chunks of its logical content that hold data, each named
by its SHA-256; the rest of the image reads as zeroes (holes) and is neither stored nor sent. A deploy's
work answer carries the list (``"image"``)::

    {"virtual_size": N, "zeroed": bool, "chunk_url": "chunks/{sha256}",
     "extents": [{"offset": O, "length": L, "sha256": S,           # ordered, not overlapping
                  "pieces": [S0, S1, ...]}, ...],                 # with peers: each piece's digest
     "peers": {"url": TRACKER, "port": P, "piece_size": B}}  # optional: exchange pieces with peers
                                                             # (rhaas.agent.swarm)

The agent refuses, before writing anything, an image larger than the disk. It fetches each chunk,
checks its digest before a byte of it reaches the disk, and writes it at its offset. Holes are skipped
where the server says the disk reads zeroes (``zeroed``: a verified wipe since the last customer, or a
new disk); otherwise they are zeroed, by the device where it can (BLKZEROOUT).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from rhaas.agent import disk as disks
from rhaas.agent.work import AgentError, Artifact, ProtocolError

if TYPE_CHECKING:
    from rhaas.agent import swarm

#: The largest chunk the agent accepts (the store's chunks are 4 MiB).
MAX_CHUNK = 16 << 20


class Extent(NamedTuple):
    offset: int
    length: int
    sha256: str
    #: The digests of its pieces, the slices of ``DiskImage.piece_size`` bytes the agents exchange among
    #: themselves (empty: the peers exchange it whole).
    pieces: tuple[str, ...] = ()


class DiskImage(NamedTuple):
    virtual_size: int
    extents: tuple[Extent, ...]
    #: True: the disk reads zeroes wherever the image has a hole, so holes need no writing.
    zeroed: bool
    #: Where a chunk is fetched, ``{sha256}`` standing for its digest (relative to the agent API's URL).
    chunk_url: str
    #: The peer exchange's tracker URL (relative to the agent API's URL) and the port to serve peers on;
    #: None: every chunk from the server.
    peers: tuple[str, int] | None = None
    #: The size of the extents' pieces (the last piece of an extent may be shorter).
    piece_size: int = 0

    @property
    def data_bytes(self) -> int:
        return sum(e.length for e in self.extents)

    def holes(self) -> list[tuple[int, int]]:
        """(offset, length) of every range no extent covers, up to the virtual size."""
        out, at = [], 0
        for e in self.extents:
            if e.offset > at:
                out.append((at, e.offset - at))
            at = e.offset + e.length
        if at < self.virtual_size:
            out.append((at, self.virtual_size - at))
        return out


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{what} is not a byte count")
    return value


def parse_image(data: object) -> DiskImage:
    """The ``image`` of a deploy's work answer. Raises `ProtocolError` if it is malformed: extents out of
    order, overlapping, empty, too long, or past the virtual size."""
    if not isinstance(data, dict):
        raise ProtocolError("image is not an object")
    size = _count(data.get("virtual_size"), "image.virtual_size")
    url = data.get("chunk_url")
    if not isinstance(url, str) or "{sha256}" not in url:
        raise ProtocolError("image.chunk_url has no {sha256}")
    zeroed = data.get("zeroed", False)
    if not isinstance(zeroed, bool):
        raise ProtocolError("image.zeroed is not true or false")
    raw = data.get("extents")
    if not isinstance(raw, list):
        raise ProtocolError("image.extents is not a list")
    extents, end = [], 0
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ProtocolError(f"image.extents[{n}] is not an object")
        offset = _count(item.get("offset"), f"image.extents[{n}].offset")
        length = _count(item.get("length"), f"image.extents[{n}].length")
        sha = item.get("sha256")
        if not _is_sha256(sha):
            raise ProtocolError(f"image.extents[{n}].sha256 is not a SHA-256 hex digest")
        if not 0 < length <= MAX_CHUNK:
            raise ProtocolError(f"image.extents[{n}] is {length} bytes long (1 to {MAX_CHUNK})")
        if offset < end or offset + length > size:
            raise ProtocolError(f"image.extents[{n}] overlaps the one before or ends past the image")
        extents.append(Extent(offset, length, str(sha)))
        end = offset + length
    peers = data.get("peers")
    tracker: tuple[str, int] | None = None
    piece_size = 0
    if peers is not None:
        if not isinstance(peers, dict) or not isinstance(peers.get("url"), str):
            raise ProtocolError("image.peers has no url")
        port = peers.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ProtocolError("image.peers.port is not a TCP port")
        tracker = (peers["url"], port)
        if "piece_size" in peers:
            piece_size = _count(peers["piece_size"], "image.peers.piece_size")
            if not 0 < piece_size <= MAX_CHUNK:
                raise ProtocolError(f"image.peers.piece_size is {piece_size} (1 to {MAX_CHUNK})")
            extents = [_pieces(e, raw[n], piece_size, n) for n, e in enumerate(extents)]
    return DiskImage(size, tuple(extents), zeroed, url, tracker, piece_size)


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _pieces(extent: Extent, item: dict[str, Any], piece_size: int, n: int) -> Extent:
    """``extent`` with the digests of its pieces (``item["pieces"]``), one per ``piece_size`` bytes."""
    pieces = item.get("pieces")
    count = -(-extent.length // piece_size)
    if not isinstance(pieces, list) or len(pieces) != count or not all(_is_sha256(p) for p in pieces):
        raise ProtocolError(f"image.extents[{n}].pieces is not a list of {count} SHA-256 hex digests")
    return extent._replace(pieces=tuple(pieces))


class Written(NamedTuple):
    data: int
    #: Bytes of holes zeroed (0 where the disk was known to read zeroes).
    zeroed: int
    #: How the holes were handled, for the report.
    holes: str


def write_image(
    image: DiskImage, disk: disks.Disk, fetch: Callable[[Artifact, Callable[[bytes], object]], str],
    progress: Callable[[int, int], None], exchange: swarm.Exchange | None = None,
) -> Written:  # fmt: skip
    """Write ``image`` onto ``disk``: each chunk fetched (``fetch(artifact, sink) -> sha256`` of the bytes
    it gave ``sink``) into memory, checked, then written at its offset; holes zeroed unless
    ``image.zeroed``. With ``exchange`` (made by `exchange_for`), the chunks come through it instead:
    from peers first, each checked all the same. Raises `AgentError` (phase ``write-disk``) if the image
    is larger than the disk (nothing written) or a chunk does not match its digest (written no further)."""
    if image.virtual_size > disk.size:
        raise AgentError(
            "write-disk",
            f"the image is {image.virtual_size} bytes, larger than {disk.path} ({disk.size} bytes): refused",
        )
    fd = os.open(disk.path, os.O_WRONLY)
    try:
        done, total = 0, image.data_bytes
        if exchange is not None:
            try:
                exchange.deliver(fd, disk.path, progress)
            except OSError as exc:
                raise AgentError("write-disk", f"fetching the image's chunks: {exc}") from exc
            done = total
        for extent in image.extents if exchange is None else ():
            url = image.chunk_url.replace("{sha256}", extent.sha256)
            buf = bytearray()
            # ``fetch`` hashes what it hands ``buf`` as it streams: the digest is of these very bytes.
            digest = fetch(Artifact(url, extent.sha256, extent.length), buf.extend)
            if digest != extent.sha256:
                raise AgentError("write-disk", f"chunk {extent.sha256} at {extent.offset} does not match its "
                                 "digest: refused, nothing of it written")  # fmt: skip
            view, at = memoryview(buf), 0
            while at < len(view):
                at += os.pwrite(fd, view[at:], extent.offset + at)
            done += extent.length
            progress(done, total)
        holes = image.holes()
        if image.zeroed or not holes:
            how = "holes skipped: the disk reads zeroes there" if holes else "no holes"
            zeroed = 0
        else:
            zeroed = sum(length for _, length in holes)
            by_device = disks.zero_regions(fd, disk.path, holes)
            how = "holes zeroed by the device (BLKZEROOUT)" if by_device else "holes written with zeros"
        os.fsync(fd)
    finally:
        os.close(fd)
    return Written(done, zeroed, how)


def exchange_for(
    image: DiskImage, fetch: Callable[[Artifact, Callable[[bytes], object]], str],
    announce: Callable[[str, str, int, list[tuple[str, int]]], object],
) -> swarm.Exchange | None:  # fmt: skip
    """The peer exchange of ``image`` (None if the work answer offers none): chunks from the server by
    ``fetch`` (as `write_image` takes it), announcements by ``announce(tracker_url, have, port, dropped)``
    (``have``: the bit map of the pieces held, hex; the tracker's JSON answer). None too if the peers'
    port cannot be opened: the server then sends it all."""
    if image.peers is None:
        return None
    from rhaas.agent import swarm  # here: only a deploy with peers needs it

    tracker, port = image.peers

    def from_server(chunk: swarm.Chunk, sink: Callable[[bytes], object]) -> str:
        url = image.chunk_url.replace("{sha256}", chunk.sha256)
        return fetch(Artifact(url, chunk.sha256, chunk.length), sink)

    def tell(have: str, port: int, dropped: list[tuple[str, int]]) -> dict[str, Any]:
        answer = announce(tracker, have, port, dropped)
        if not isinstance(answer, dict):
            raise ValueError("the tracker's answer is not an object")
        return answer

    parts = []
    for e in image.extents:
        pieces = [swarm.Chunk(e.offset, e.length, e.sha256)]
        if e.pieces:
            size = image.piece_size
            pieces = [
                swarm.Chunk(e.offset + k * size, min(size, e.length - k * size), sha)
                for k, sha in enumerate(e.pieces)
            ]
        parts.append(swarm.Extent(swarm.Chunk(e.offset, e.length, e.sha256), tuple(pieces)))
    try:
        return swarm.Exchange(parts, from_server, tell, port=port)
    except OSError as exc:
        from rhaas.agent.system import log

        log(f"peer exchange: cannot serve peers on port {port} ({exc}); every chunk from the server")
        return None
