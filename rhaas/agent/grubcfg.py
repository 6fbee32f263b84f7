"""The entry GRUB would boot by default, read from a grub.cfg without running GRUB (standard library only).

The target is what ``grub-mkconfig`` writes (Debian's and Ubuntu's ``10_linux`` shape, Fedora's
``blscfg``, and the small grub.cfg on an ESP that ``configfile``s the real one). The script is parsed
into commands, blocks and conditionals and interpreted conservatively:

- ``set``, assignments, ``load_env`` (grubenv), ``search`` (by file system UUID, label or file),
  ``configfile``, ``source``, and ``[ … ]`` tests over strings and file existence are evaluated;
- an ``if`` whose condition cannot be evaluated (it runs a command, or reads ``$grub_platform``, which
  depends on the firmware) contributes only the menu entries its ``then`` branch defines, never its
  variable settings;
- functions are not called, loops are skipped, anything else (``insmod``, ``echo``, fonts) is ignored;
- ``default`` picks the entry as GRUB does: a number, a title or an ``--id``, ``>``-separated through
  submenus, entry 0 when it names nothing; ``blscfg`` puts the Boot Loader Specification entries there.

Then the chosen entry's body runs the same way, and its ``linux`` and ``initrd`` lines are the answer,
paths relative to ``$root`` (a device as GRUB names it, ``hd0,gpt2``) as GRUB resolves them. What GRUB
would need the disk for is asked of a `GrubHost`.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

#: Variables GRUB sets itself. ``grub_platform`` is unknown: it depends on how the node boots.
BUILTIN = {
    "feature_menuentry_id": "y", "feature_platform_search_hint": "y", "feature_default_font_path": "y",
    "feature_all_video_module": "y", "feature_timeout_style": "y", "feature_200_final": "y",
    "feature_nativedisk_cmd": "y", "grub_cpu": "x86_64",
}  # fmt: skip
UNKNOWN = frozenset({"grub_platform"})
LINUX = ("linux", "linuxefi", "linux16")
INITRD = ("initrd", "initrdefi", "initrd16")
NOT_LINUX = ("chainloader", "multiboot", "multiboot2", "kfreebsd", "knetbsd", "appleloader", "legacy_kernel")
#: configfile/source nesting followed before it is taken as a loop.
MAX_NESTING = 8
#: Commands interpreted at most (a pathological grub.cfg must not keep the agent busy).
MAX_STEPS = 200_000
GRUBENV_MAX = 65536


class GrubError(RuntimeError):
    """The grub.cfg gives no Linux entry: it does not parse, defines no entry, or its default is not Linux."""


#: A word: its (text, quoting) parts, quoting "" (none), '"' or "'".
Word = list[tuple[str, str]]


class Cmd(NamedTuple):
    words: list[Word]
    line: int


class Block(NamedTuple):
    """A ``menuentry``, ``submenu`` or ``function`` and its body."""

    kind: str
    words: list[Word]
    body: list[Node]
    line: int


class If(NamedTuple):
    #: (condition, body) for the ``if`` and each ``elif``.
    branches: list[tuple[list[Node], list[Node]]]
    otherwise: list[Node]


Node = Cmd | Block | If


class GrubHost:
    """What reading a grub.cfg needs of the disk. Devices are named as GRUB names them (``hd0,gpt2``)."""

    def read(self, device: str, path: str) -> bytes | None:
        """A (small) file's bytes, None if it is not there."""
        raise NotImplementedError

    def size(self, device: str, path: str) -> int | None:
        """A file's size, None if there is no such file (links followed)."""
        raise NotImplementedError

    def search(self, kind: str, value: str) -> str | None:
        """The device whose file system has this ``fs_uuid``, ``fs_label`` or ``file``, None if none."""
        raise NotImplementedError

    def bls_entries(self, env: dict[str, str]) -> list[MenuItem]:
        """The Boot Loader Specification entries ``blscfg`` would add, in GRUB's order."""
        return []


class MenuItem:
    """An entry of the menu: a ``menuentry`` (its body), a ``submenu`` (its entries), or a Boot Loader
    Specification entry that ``blscfg`` added (``bls``, as the host gave it)."""

    def __init__(
        self,
        title: str,
        id: str,
        kind: str,
        body: list[Node] | None = None,
        bls: object = None,
        where: str = "",
    ) -> None:
        self.title = title
        self.id = id
        self.kind = kind  # "menuentry", "submenu", or "bls"
        self.body = body or []
        self.children: list[MenuItem] = []
        self.bls = bls
        self.where = where

    def __repr__(self) -> str:
        return f"MenuItem({self.kind} {self.title!r} id={self.id!r} at {self.where})"


class Choice:
    """What the default entry boots: the ``linux`` and ``initrd`` files as (device, path) and the
    command line GRUB passes (``BOOT_IMAGE=<path as written>`` and the ``linux`` line's arguments), or
    (``bls``) the Boot Loader Specification entry that ``blscfg`` made of it, with GRUB's variables."""

    def __init__(self, title: str, where: str, bls: object = None, env: dict[str, str] | None = None) -> None:
        self.title = title
        self.where = where
        self.kernel: tuple[str, str] | None = None
        self.initrds: list[tuple[str, str]] = []
        self.cmdline = ""
        self.bls = bls
        self.env = env or {}


# Parsing.
def _commands(text: str) -> list[tuple[list[Word], int]]:
    """The script as commands (lists of words) with their line numbers; a lone ``{`` or ``}`` is a
    command of its own, which is all the grammar the parser needs from braces."""
    out: list[tuple[list[Word], int]] = []
    words: list[Word] = []
    word: Word = []
    cur: list[str] = []
    started = False
    i, n, line, start = 0, len(text), 1, 1

    def end_word() -> None:
        nonlocal word, cur, started, start
        if cur:
            word.append(("".join(cur), ""))
            cur = []
        if started:
            if not words:
                start = line
            if word == [("{", "")] or word == [("}", "")]:
                end_command()
                out.append(([word], line))
            else:
                words.append(word)
        word, started = [], False

    def end_command() -> None:
        nonlocal words
        if words:
            out.append((words, start))
        words = []

    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            if text[i + 1] == "\n":
                line += 1
            else:
                cur.append(text[i + 1])
                started = True
            i += 2
        elif c in "'\"":
            if cur:
                word.append(("".join(cur), ""))
                cur = []
            j = i + 1
            buf: list[str] = []
            while j < n and text[j] != c:
                if c == '"' and text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\$\n':
                    j += 1
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise GrubError(f"line {line}: unterminated {c} quote")
            word.append(("".join(buf), c))
            started = True
            i = j + 1
        elif c in " \t\r\n;":
            end_word()
            if c in "\n;":
                end_command()
            if c == "\n":
                line += 1
            i += 1
        elif c == "#" and not started:
            while i < n and text[i] != "\n":
                i += 1
        else:
            cur.append(c)
            started = True
            i += 1
    end_word()
    end_command()
    return out


def _plain(word: Word) -> str:
    """The word's text if it is a single unquoted literal (a keyword or a brace), else ""."""
    return word[0][0] if len(word) == 1 and word[0][1] == "" else ""


def parse(text: str) -> list[Node]:
    """A grub.cfg's commands, blocks and conditionals; GrubError if blocks or conditionals do not close."""
    commands = _commands(text)
    pos = 0

    def block(stop: tuple[str, ...]) -> tuple[list[Node], str]:
        nonlocal pos
        out: list[Node] = []
        while pos < len(commands):
            words, line = commands[pos]
            head = _plain(words[0])
            pos += 1
            if head in stop:
                if len(words) > 1:  # "then set x=1": the rest is the first command of what follows
                    commands.insert(pos, (words[1:], line))
                return out, head
            if head in ("menuentry", "submenu", "function"):
                if pos >= len(commands) or _plain(commands[pos][0][0]) != "{":
                    raise GrubError(f"line {line}: {head} without a {{ body }}")
                pos += 1
                body, end = block(("}",))
                if end != "}":
                    raise GrubError(f"line {line}: {head} body is not closed")
                out.append(Block(head, words[1:], body, line))
            elif head == "if":
                if len(words) > 1:
                    commands.insert(pos, (words[1:], line))
                branches = []
                otherwise: list[Node] = []
                while True:
                    cond, end = block(("then",))
                    body, end = block(("elif", "else", "fi")) if end == "then" else ([], "")
                    if not end:
                        raise GrubError(f"line {line}: if without then/fi")
                    branches.append((cond, body))
                    if end == "elif":
                        continue
                    if end == "else":
                        otherwise, end = block(("fi",))
                        if end != "fi":
                            raise GrubError(f"line {line}: if without fi")
                    break
                out.append(If(branches, otherwise))
            elif head in ("for", "while", "until"):
                _, end = block(("done",))
                if end != "done":
                    raise GrubError(f"line {line}: {head} without done")
            elif head == "{":
                inner, end = block(("}",))
                out.extend(inner)
            elif head == "}":
                raise GrubError(f"line {line}: }} without a block")
            else:
                out.append(Cmd(words, line))
        return out, ""

    nodes, _ = block(())
    return nodes


# Interpreting.
class _Stop(Exception):
    """``configfile`` replaced the script: what follows it in the old one never runs."""


class _Unknown(Exception):
    """A value depends on what is not known here (``$grub_platform``, a command's status)."""


def split_device(path: str, root: str) -> tuple[str, str]:
    """(device, path) of a GRUB file name: ``(hd0,gpt2)/boot/x`` or ``/boot/x`` on ``root``."""
    if path.startswith("("):
        end = path.find(")")
        if end < 0:
            raise GrubError(f"bad file name {path!r}")
        return path[1:end], path[end + 1 :] or "/"
    return root, path


def parse_grubenv(data: bytes) -> dict[str, str]:
    """Variables of a grubenv block (``name=value`` lines, ``#`` padding), unescaping ``\\``."""
    env = {}
    for raw in data[:GRUBENV_MAX].decode("utf-8", "replace").splitlines():
        if not raw or raw.startswith("#") or "=" not in raw:
            continue
        name, value = raw.split("=", 1)
        env[name] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return env


class Interpreter:
    """Runs a grub.cfg as far as finding the default entry needs (see the module's docstring)."""

    def __init__(self, host: GrubHost, device: str, path: str) -> None:
        self.host = host
        self.env: dict[str, str] = dict(BUILTIN)
        self.env["root"] = device
        directory = path.rsplit("/", 1)[0] or "/"
        self.env["prefix"] = f"({device}){directory}"
        self.menu: list[MenuItem] = []
        self.files = [f"{path} on {device}"]
        self.steps = 0
        self.depth = 0

    # Words.
    def expand(self, word: Word) -> list[str]:
        """A word as arguments: variables substituted (not in single quotes), unquoted expansions split."""
        text, split = [], False
        for part, quoting in word:
            if quoting == "'":
                text.append(part)
                continue
            text.append(self._substitute(part))
            if quoting == "" and "$" in part:
                split = True
        joined = "".join(text)
        return joined.split() if split else [joined]

    def _substitute(self, part: str) -> str:
        out, i, n = [], 0, len(part)
        while i < n:
            c = part[i]
            if c != "$" or i + 1 >= n:
                out.append(c)
                i += 1
                continue
            if part[i + 1] == "{":
                end = part.find("}", i + 2)
                if end < 0:
                    out.append(part[i:])
                    break
                name, i = part[i + 2 : end], end + 1
            else:
                j = i + 1
                while j < n and (part[j].isalnum() or part[j] == "_"):
                    j += 1
                if j == i + 1:
                    if part[j] in "?#@*":  # specials: a status or positional arguments, unknown here
                        raise _Unknown(f"${part[j]}")
                    out.append(c)
                    i += 1
                    continue
                name, i = part[i + 1 : j], j
            if name in UNKNOWN:
                raise _Unknown(f"${name}")
            out.append(self.env.get(name, ""))
        return "".join(out)

    def args(self, words: list[Word]) -> list[str]:
        return [arg for word in words for arg in self.expand(word)]

    # Script.
    def run_file(self, device: str, path: str) -> None:
        """Read a grub.cfg (or a sourced file) and run it; GrubError if it is not there or does not parse."""
        data = self.host.read(device, path)
        if data is None:
            raise GrubError(f"{path} on {device} is missing")
        if self.depth >= MAX_NESTING:
            raise GrubError(f"{path}: configfile/source nested more than {MAX_NESTING} deep")
        self.depth += 1
        try:
            self.run(parse(data.decode("utf-8", "replace")), self.menu, f"{path} on {device}", False)
        finally:
            self.depth -= 1

    def run(self, nodes: list[Node], menu: list[MenuItem], where: str, collect_only: bool) -> None:
        for node in nodes:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise GrubError(f"{where}: more than {MAX_STEPS} commands")
            if isinstance(node, Block):
                self._block(node, menu, where)
            elif isinstance(node, If):
                self._if(node, menu, where, collect_only)
            elif not collect_only:
                self._command(node, menu, where)

    def _block(self, node: Block, menu: list[MenuItem], where: str) -> None:
        if node.kind == "function":
            return
        try:
            args = self.args(node.words)
        except _Unknown:
            args = [node.words[0][0][0]] if node.words else []
        title = args[0] if args else ""
        entry_id = ""
        for i, arg in enumerate(args[1:], 1):
            if arg in ("--id", "$menuentry_id_option") and i + 1 < len(args):
                entry_id = args[i + 1]
        item = MenuItem(title, entry_id, node.kind, node.body, where=f"line {node.line} of {where}")
        if node.kind == "submenu":
            saved = dict(self.env)  # a submenu's body runs in its own context
            try:
                self.run(node.body, item.children, where, False)
            finally:
                self.env = saved
        menu.append(item)

    def _if(self, node: If, menu: list[MenuItem], where: str, collect_only: bool) -> None:
        for cond, body in node.branches:
            verdict = None if collect_only else self._condition(cond)
            if verdict is None:
                # Cannot tell: take the menu entries this branch defines, nothing else.
                self.run(body, menu, where, True)
                return
            if verdict:
                self.run(body, menu, where, False)
                return
        self.run(node.otherwise, menu, where, collect_only)

    def _condition(self, cond: list[Node]) -> bool | None:
        if len(cond) != 1 or not isinstance(cond[0], Cmd):
            return None
        try:
            args = self.args(cond[0].words)
        except _Unknown:
            return None
        if args and args[0] == "[":
            if args[-1] != "]":
                return None
            return self._test(args[1:-1])
        if args and args[0] == "test":
            return self._test(args[1:])
        if args and args[0] == "true":
            return True
        if args and args[0] == "false":
            return False
        return None  # a command's status (loadfont, search, keystatus…): unknown here

    def _test(self, args: list[str]) -> bool | None:
        if not args:
            return False
        if args[0] == "!":
            inner = self._test(args[1:])
            return None if inner is None else not inner
        if len(args) == 1:
            return args[0] != ""
        if len(args) == 2:
            op, value = args
            if op == "-z":
                return value == ""
            if op == "-n":
                return value != ""
            if op in ("-e", "-f", "-s"):
                size = self.host.size(*split_device(value, self.env.get("root", "")))
                return size is not None and (op != "-s" or size > 0)
            return None
        if len(args) == 3:
            a, op, b = args
            if op in ("=", "=="):
                return a == b
            if op == "!=":
                return a != b
            numeric = {"-eq": int.__eq__, "-ne": int.__ne__, "-lt": int.__lt__, "-le": int.__le__,
                       "-gt": int.__gt__, "-ge": int.__ge__}  # fmt: skip
            if op in numeric:
                try:
                    return bool(numeric[op](int(a), int(b)))
                except ValueError:
                    return None
        return None

    def _command(self, node: Cmd, menu: list[MenuItem], where: str) -> None:
        try:
            args = self.args(node.words)
        except _Unknown:
            return  # a command whose arguments are unknown here changes nothing we rely on
        if not args:
            return
        name, rest = args[0], args[1:]
        if "=" in name and name.split("=", 1)[0].replace("_", "a").isalnum() and not rest:
            key, value = name.split("=", 1)
            self.env[key] = value
        elif name == "set":
            for arg in rest:
                if "=" in arg:
                    key, value = arg.split("=", 1)
                    self.env[key] = value
        elif name == "unset":
            for key in rest:
                self.env.pop(key, None)
        elif name == "load_env":
            self._load_env(rest)
        elif name.startswith("search"):
            self._search(name, rest)
        elif name == "blscfg":
            menu.extend(self.host.bls_entries(dict(self.env)))
        elif name == "configfile" and rest:
            device, path = split_device(rest[0], self.env.get("root", ""))
            self.files.append(f"{path} on {device}")
            self.menu.clear()
            self.env["prefix"] = f"({device}){path.rsplit('/', 1)[0] or '/'}"
            self.run_file(device, path)
            raise _Stop
        elif name in ("source", ".") and rest:
            device, path = split_device(rest[0], self.env.get("root", ""))
            if self.host.size(device, path) is not None:
                self.files.append(f"{path} on {device}")
                self.run_file(device, path)

    def _load_env(self, rest: list[str]) -> None:
        target = f"{self.env.get('prefix', '')}/grubenv"
        names: list[str] = []
        i = 0
        while i < len(rest):
            if rest[i] in ("-f", "--file") and i + 1 < len(rest):
                target = rest[i + 1]
                i += 2
                continue
            if rest[i].startswith("--file="):
                target = rest[i].split("=", 1)[1]
            elif not rest[i].startswith("-"):
                names.append(rest[i])
            i += 1
        device, path = split_device(target, self.env.get("root", ""))
        data = self.host.read(device, path)
        if data is None:
            return
        for key, value in parse_grubenv(data).items():
            if not names or key in names:
                self.env[key] = value

    def _search(self, name: str, rest: list[str]) -> None:
        kind = {"search.fs_uuid": "fs_uuid", "search.fs_label": "fs_label", "search.file": "file"}.get(name)
        var = "root"
        values = []
        if kind:  # search.fs_uuid UUID [VAR] [HINTS]
            if not rest:
                return
            values, var = [rest[0]], rest[1] if len(rest) > 1 else "root"
        else:
            kind = "file"
            i = 0
            while i < len(rest):
                arg = rest[i]
                if arg in ("--fs-uuid", "-u"):
                    kind = "fs_uuid"
                elif arg in ("--label", "-l"):
                    kind = "fs_label"
                elif arg in ("--file", "-f"):
                    kind = "file"
                elif arg.startswith("--set="):
                    var = arg.split("=", 1)[1]
                elif arg in ("--set", "-s"):
                    var = "root"
                elif arg.startswith("--hint") or arg == "-h":
                    if "=" not in arg and i + 1 < len(rest):
                        i += 1
                elif not arg.startswith("-"):
                    values.append(arg)
                i += 1
        for value in values:
            device = self.host.search(kind, value)
            if device is not None:
                self.env[var] = device
                return

    # The default entry.
    def choose(self) -> MenuItem:
        """The entry ``$default`` names, as GRUB picks it; entry 0 when it names nothing."""
        if not self.menu:
            raise GrubError(f"{', '.join(self.files)}: no menu entries")
        default = self.env.get("default", "").strip()
        items = self.menu
        parts = default.split(">") if default else ["0"]
        for depth, part in enumerate(parts):
            item = _find(items, part) or items[0]
            if item.kind != "submenu":
                return item
            if not item.children:
                raise GrubError(f"submenu {item.title!r} ({item.where}) has no entries")
            items = item.children
            if depth == len(parts) - 1:
                return _first_entry(items)
        return items[0]

    def boot(self, item: MenuItem) -> Choice:
        """What running ``item`` would load."""
        if item.kind == "bls":
            return Choice(item.title, item.where, bls=item.bls, env=dict(self.env))
        saved = dict(self.env)
        choice = Choice(item.title, item.where)
        try:
            self._entry(item.body, choice)
        finally:
            self.env = saved
        if choice.kernel is None:
            raise GrubError(f"menuentry {item.title!r} ({item.where}) loads no Linux kernel")
        return choice

    def _entry(self, nodes: list[Node], choice: Choice) -> None:
        for node in nodes:
            if isinstance(node, If):
                for cond, body in node.branches:
                    verdict = self._condition(cond)
                    if verdict is None or verdict:  # unknown: GRUB's own shape is "then" for hints
                        self._entry(body, choice)
                        break
                else:
                    self._entry(node.otherwise, choice)
                continue
            if not isinstance(node, Cmd):
                continue
            try:
                args = self.args(node.words)
            except _Unknown as exc:
                head = _plain(node.words[0]) if node.words else ""
                if head in LINUX or head in INITRD:
                    raise GrubError(f"line {node.line}: {head} depends on {exc}, unknown here") from None
                continue
            if not args:
                continue
            name = args[0]
            root = self.env.get("root", "")
            if name in LINUX:
                if len(args) < 2:
                    raise GrubError(f"line {node.line}: {name} without a file")
                choice.kernel = split_device(args[1], root)
                choice.cmdline = " ".join([f"BOOT_IMAGE={args[1]}", *args[2:]])
            elif name in INITRD:
                choice.initrds = [split_device(arg, root) for arg in args[1:]]
            elif name in NOT_LINUX:
                raise GrubError(f"line {node.line}: the default entry runs {name}, not a Linux kernel")
            else:
                self._command(node, [], choice.where)


def _find(items: list[MenuItem], key: str) -> MenuItem | None:
    key = key.strip()
    if key.isdigit():
        n = int(key)
        return items[n] if n < len(items) else None
    for item in items:
        if key in (item.title, item.id):
            return item
    return None


def _first_entry(items: list[MenuItem]) -> MenuItem:
    item = items[0]
    while item.kind == "submenu" and item.children:
        item = item.children[0]
    return item


def default_entry(host: GrubHost, device: str, path: str) -> Choice:
    """What the grub.cfg at ``path`` on ``device`` boots by default. GrubError says why there is none."""
    interp = Interpreter(host, device, path)
    with contextlib.suppress(_Stop):  # a configfile ran instead of the rest of the file
        interp.run_file(device, path)
    return interp.boot(interp.choose())
