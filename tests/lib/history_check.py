"""history_check.py: a Jepsen-style checker of what a loomship cluster
promised against what it kept (issue 16; DESIGN sections 5 and 6).

Input
- each node's --ack-log: one line "EPOCH SEQ CHECKSUM" (decimal, decimal,
  16 hex digits) per save acknowledged to the application;
- the final leader's `loomship inspect DIR --json` (epoch, seq, checksum,
  history, branches [{"epoch","seq","checksum"}]: epoch E began at seq, so
  its first commit is seq + 1);
- a way to ask the final leader's checksum at a seq:
  `loomship inspect DIR --at SEQ --json` (inspect_checksum_at below);
- optionally the other survivors' inspect documents.

Checks
1. never two nodes acknowledging saves at one epoch;
2. per node, acknowledged (epoch, seq) strictly increase (so every new
   epoch is greater than the last), and every line is well formed;
3. no acknowledged save missing from the final leader's history: an ack
   (E, S, C) with S within the kept part of epoch E (S <= the final seq and
   S <= the branch point where the first epoch after E began) must be in
   the final history: checksum C (and epoch E) at S. An ack past the kept
   part is "lost" and counted; with no_loss=True (--sync 1) a lost ack is a
   violation. An ack the positions ring cannot confirm any more is counted
   as "unverifiable" (not a violation);
4. survivors never adopted another history (same history id).

Use
    report = check({"n1": "n1.ack", "n2": "n2.ack"}, final_doc,
                   inspect_checksum_at(loomship, final_dir), seed=42,
                   no_loss=True, survivors={"n2": doc2})
    assert report.ok, report.text()
or from a shell:
    history_check.py --seed 42 --no-loss --loomship BIN \
        --ack n1=n1.ack --ack n2=n2.ack --final n1=DIR [--survivor n2=DIR]
(exit 0 ok, 1 violations; the report on stdout)."""
import argparse
import json
import re
import subprocess
import sys

ACK_LINE = re.compile(r"^(\d+) (\d+) ([0-9a-f]{16})$")


class Ack:
    """One acknowledged save, and where it was read."""
    __slots__ = ("node", "epoch", "seq", "checksum", "where")

    def __init__(self, node, epoch, seq, checksum, where):
        self.node, self.epoch, self.seq = node, epoch, seq
        self.checksum, self.where = checksum, where

    def __repr__(self):
        return "%s: %d %d %s" % (self.where, self.epoch, self.seq, self.checksum)


class Report:
    """What check() found. ok: no violation. lost / unverifiable: counts."""

    def __init__(self, seed):
        self.seed = seed
        self.violations = []   # (kind, text)
        self.lost = []         # Acks past the kept part
        self.unverifiable = [] # Acks the ring no longer confirms
        self.acks = 0
        self.kept = 0

    @property
    def ok(self):
        return not self.violations

    def add(self, kind, text):
        self.violations.append((kind, text))

    def kinds(self):
        return sorted({k for k, _ in self.violations})

    def text(self):
        out = ["history check (seed %s): %s; %d acks, %d confirmed in the "
               "final history, %d lost, %d unverifiable"
               % (self.seed, "OK" if self.ok else "%d VIOLATIONS" % len(self.violations),
                  self.acks, self.kept, len(self.lost), len(self.unverifiable))]
        for kind, text in self.violations:
            out.append("  [%s] %s" % (kind, text))
        for a in self.lost[:20]:
            out.append("  [lost] %r" % a)
        if len(self.lost) > 20:
            out.append("  [lost] ... %d more" % (len(self.lost) - 20))
        return "\n".join(out)


def read_acks(node, source, report):
    """The Acks of node from source (a path, or a list of lines)."""
    if isinstance(source, str):
        with open(source, encoding="ascii", errors="replace") as f:
            lines, name = f.read().split("\n"), source
        if lines and lines[-1] == "":
            lines.pop()
    else:
        lines, name = list(source), "%s.ack" % node
    acks = []
    for i, line in enumerate(lines, 1):
        where = "%s:%d" % (name, i)
        m = ACK_LINE.match(line)
        if not m:
            report.add("malformed", "%s: %r is not 'EPOCH SEQ CHECKSUM'" % (where, line))
            continue
        acks.append(Ack(node, int(m.group(1)), int(m.group(2)), m.group(3), where))
    return acks


def check_one_writer_per_epoch(all_acks, report):
    """1. never two nodes acknowledging saves at one epoch."""
    first = {}  # epoch -> {node: first Ack}
    for a in all_acks:
        first.setdefault(a.epoch, {}).setdefault(a.node, a)
    for epoch, nodes in sorted(first.items()):
        if len(nodes) > 1:
            report.add("two-writers", "epoch %d acknowledged by %s: %s"
                       % (epoch, ", ".join(sorted(nodes)),
                          "; ".join(repr(nodes[n]) for n in sorted(nodes))))


def check_monotonic(node_acks, report):
    """2. per node, (epoch, seq) strictly increase."""
    for acks in node_acks.values():
        for prev, cur in zip(acks, acks[1:]):
            if (cur.epoch, cur.seq) <= (prev.epoch, prev.seq):
                kind = "epoch-back" if cur.epoch < prev.epoch else "seq-order"
                report.add(kind, "%r after %r" % (cur, prev))


def kept_limit(final, epoch):
    """The last seq of epoch `epoch` the final history kept: the branch
    point of the first epoch after it, else the final seq."""
    later = [b for b in final.get("branches", []) if b["epoch"] > epoch]
    limit = final["seq"]
    if later:
        limit = min(limit, min(later, key=lambda b: b["epoch"])["seq"])
    return limit


def check_kept(all_acks, final, checksum_at, report, no_loss):
    """3. every ack within the kept part is in the final history."""
    for a in all_acks:
        if a.epoch > final["epoch"]:
            report.add("future-epoch", "%r: epoch past the final leader's %d"
                       % (a, final["epoch"]))
            continue
        if a.seq > kept_limit(final, a.epoch):
            report.lost.append(a)
            if no_loss:
                report.add("lost", "%r: not in the final history (kept up to "
                           "seq %d of epoch %d)" % (a, kept_limit(final, a.epoch), a.epoch))
            continue
        if a.seq == final["seq"]:
            got = (final["epoch"], final["checksum"])
        else:
            got = checksum_at(a.seq)
        # A branch point: the last commit of an older epoch is where the
        # next epoch began, and the directory reports that seq at the newer
        # epoch (promotion changes the epoch, not the image): the checksum
        # decides there.
        at_branch = any(b["seq"] == a.seq and b["epoch"] > a.epoch
                        for b in final.get("branches", []))
        if got is None:
            report.unverifiable.append(a)
        elif got[1] != a.checksum or (got[0] != a.epoch and not at_branch):
            report.add("missing", "%r: the final history has epoch %d checksum "
                       "%s at seq %d" % (a, got[0], got[1], a.seq))
        else:
            report.kept += 1


def check(acks, final, checksum_at, seed=None, no_loss=False, survivors=None):
    """Run every check; acks: {node: path or list of lines}; final: the
    final leader's inspect --json document; checksum_at(seq) -> (epoch,
    checksum hex) or None. Returns a Report."""
    report = Report(seed)
    node_acks = {n: read_acks(n, src, report) for n, src in sorted(acks.items())}
    all_acks = [a for n in sorted(node_acks) for a in node_acks[n]]
    report.acks = len(all_acks)
    check_one_writer_per_epoch(all_acks, report)
    check_monotonic(node_acks, report)
    check_kept(all_acks, final, checksum_at, report, no_loss)
    for name, doc in sorted((survivors or {}).items()):
        if doc.get("history") not in (None, final.get("history")):
            report.add("history", "survivor %s has history %s, the final leader %s"
                       % (name, doc.get("history"), final.get("history")))
    return report


def inspect(loomship, directory):
    """`loomship inspect DIR --json` as a dict."""
    out = subprocess.run([loomship, "inspect", directory, "--json"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def inspect_checksum_at(loomship, directory):
    """A checksum_at for check(): `loomship inspect DIR --at SEQ --json`,
    None when the ring no longer has SEQ (exit 1)."""
    cache = {}

    def at(seq):
        if seq not in cache:
            p = subprocess.run([loomship, "inspect", directory, "--at", str(seq), "--json"],
                               capture_output=True, text=True, timeout=60)
            if p.returncode == 1:
                cache[seq] = None
            elif p.returncode != 0:
                raise RuntimeError("inspect --at %d: %s" % (seq, p.stderr.strip()))
            else:
                d = json.loads(p.stdout)
                cache[seq] = (d["epoch"], d["checksum"])
        return cache[seq]
    return at


def _pairs(values):
    return dict(v.split("=", 1) for v in values or [])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", default="?")
    ap.add_argument("--no-loss", action="store_true", help="a lost ack is a violation (--sync 1)")
    ap.add_argument("--loomship", required=True)
    ap.add_argument("--ack", action="append", required=True, help="NODE=FILE")
    ap.add_argument("--final", required=True, help="NODE=DIR of the final leader")
    ap.add_argument("--survivor", action="append", help="NODE=DIR")
    a = ap.parse_args(argv)
    _, final_dir = a.final.split("=", 1)
    final = inspect(a.loomship, final_dir)
    survivors = {n: inspect(a.loomship, d) for n, d in _pairs(a.survivor).items()}
    report = check(_pairs(a.ack), final, inspect_checksum_at(a.loomship, final_dir),
                   seed=a.seed, no_loss=a.no_loss, survivors=survivors)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
