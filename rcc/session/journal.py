"""The session journal: every commit of the history graph, as one JSON line, beside the database.

``session.journal`` is append-only. Each line is one commit: the op (kind, body, seq,
nodes before and after, times, result), the node it made (id, parent, structure, plan,
summary, params and its name → (hash, bytes) manifest), the metrics, label and meta values
it wrote. The line is written and fsync'd inside the database transaction, before COMMIT,
so the journal holds every committed op; at most its last line is an op whose COMMIT a
crash prevented (its blobs were all written before it, so it is whole), and opening the
session for writing drops such a line. With the store, the journal is enough to rebuild a
lost or damaged database (rcc.session.repair).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rcc.errors import RccError
from rcc.session.store import fsync_dir

JOURNAL = "session.journal"


class JournalAhead(RccError):
    """The journal holds commits the database lacks: the database lost data (repair rebuilds it)."""
HEADER = {"journal": "rcc-session", "version": 1}


@dataclass
class JournalRead:
    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # lines that could not be used, and why
    valid_bytes: int = 0  # length of the readable prefix (a torn last line is not part of it)


def read_journal(path: Path) -> JournalRead:
    """Every whole record of the journal, in order; a torn or unreadable line ends it."""
    out = JournalRead()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        out.problems.append(f"no journal at {str(path)!r}")
        return out
    offset = 0
    for number, line in enumerate(raw.split(b"\n")[:-1] if raw.endswith(b"\n") else raw.split(b"\n"), start=1):
        end = offset + len(line) + 1
        if end > len(raw):  # no newline: a line a crash cut short
            out.problems.append(f"journal line {number} is incomplete (cut short by a crash); ignored")
            break
        try:
            record = json.loads(line)
        except ValueError:
            out.problems.append(f"journal line {number} is not valid JSON; it and every later line ignored")
            break
        if number == 1:
            if record != HEADER:
                out.problems.append(f"journal line 1 is not an rcc session journal header; allowed: {HEADER}")
                break
        elif not isinstance(record, dict) or not isinstance(record.get("seq"), int):
            out.problems.append(f"journal line {number} is not a commit record; it and every later line ignored")
            break
        else:
            out.records.append(record)
        offset = end
        out.valid_bytes = offset
    return out


class Journal:
    """Appends commit records to ``session.journal`` (one writer: the session lock's holder)."""

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return self.path.is_file()

    def start(self, records: list[dict]) -> None:
        """Write a new journal holding ``records`` (an existing session's history, on first opening)."""
        temporary = self.path.with_name(self.path.name + ".part")
        with open(temporary, "wb") as out:
            out.write(_line(HEADER))
            for record in records:
                out.write(_line(record))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        fsync_dir(self.path.parent)

    def append(self, record: dict) -> None:
        with open(self.path, "ab") as out:
            out.write(_line(record))
            out.flush()
            os.fsync(out.fileno())

    def reconcile(self, committed: list[int], history: Callable[[], list[dict]]) -> str | None:
        """Make the journal hold exactly the ``committed`` op seqs (the database's), in order.

        A record past the last commit (its COMMIT never happened) or a torn last line is
        dropped; a journal that is missing or disagrees otherwise is written anew from
        ``history()`` (the database's records). Returns what was done, or None.
        """
        read = read_journal(self.path)
        seqs = [record["seq"] for record in read.records]
        whole = not read.problems or (len(read.problems) == 1 and "incomplete" in read.problems[0])
        if whole and seqs[:len(committed)] == committed:
            extra = len(seqs) - len(committed)
            if extra > 1:  # one op commits at a time: more than one record past the database is lost data
                raise JournalAhead(f"the session database lacks {extra} commits that its journal "
                                   f"{str(self.path)!r} holds (ops {seqs[len(committed)]}…{seqs[-1]}); rebuild it with "
                                   f"`rcc-tui session repair {self.path.parent}`")
            if extra == 0 and os.path.getsize(self.path) == read.valid_bytes:
                return None
            self.start(read.records[:len(committed)])
            return f"dropped {extra} uncommitted journal record(s)"
        if whole and len(seqs) > len(committed) + 1:
            raise JournalAhead(f"the session database and its journal {str(self.path)!r} disagree (the journal holds "
                               f"{len(seqs)} commits, the database {len(committed)}); rebuild the database with "
                               f"`rcc-tui session repair {self.path.parent}`")
        self.start(history())
        return "journal written from the database"


def _line(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"

