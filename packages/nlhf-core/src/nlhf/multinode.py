"""Where this machine sits in a multi-node launch (docs/distributed.md, "Several nodes").

``nlhf run SPEC --nnodes N --node-rank R --master-addr HOST --master-port P --nproc K``
is run once on each of the N machines; together they start N × K processes. Node 0
owns the output directory (it claims it and its global rank 0 writes every file); the
other nodes write nothing there. :func:`check_nodes` turns the command-line flags into
:class:`Nodes` or one :class:`~nlhf.errors.InputError` naming the flag to fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from nlhf.errors import InputError

__all__ = ["DEFAULT_MASTER_PORT", "Nodes", "check_nodes"]

DEFAULT_MASTER_PORT = 29500
"""torch's default rendezvous port (``torch.distributed.run --master-port``)."""


@dataclass(frozen=True)
class Nodes:
    """The multi-node flags of ``nlhf run``, checked (:func:`check_nodes`)."""

    count: int = 1
    """``--nnodes``: machines taking part."""
    rank: int = 0
    """``--node-rank``: this machine, 0 .. count − 1; node 0 holds global rank 0."""
    master_addr: str | None = None
    """``--master-addr``: host name or address of node 0, reachable from every node."""
    master_port: int = DEFAULT_MASTER_PORT
    """``--master-port``: a free TCP port on node 0 for the rendezvous."""

    @property
    def explicit(self) -> bool:
        """A rendezvous address was given (several nodes, or a fixed port on one)."""
        return self.master_addr is not None

    @property
    def owns_outputs(self) -> bool:
        """This node claims the output directory and writes it (node 0)."""
        return self.rank == 0

    def world_size(self, nproc: int) -> int:
        """Processes in the whole run: ``count × nproc``."""
        return self.count * nproc


def _port(raw: str | int | None) -> int:
    if raw is None:
        return DEFAULT_MASTER_PORT
    text = str(raw).strip()
    try:
        port = int(text)
    except ValueError:
        raise InputError(
            f"--master-port {raw!r}: not an integer; give a free TCP port on node 0 in "
            f"1..65535 (default {DEFAULT_MASTER_PORT})"
        ) from None
    if not 1 <= port <= 65535:
        raise InputError(
            f"--master-port {port}: out of range; give a free TCP port on node 0 in 1..65535 "
            f"(default {DEFAULT_MASTER_PORT})"
        )
    return port


def check_nodes(
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: str | int | None = None,
) -> Nodes:
    """The checked flags; :class:`~nlhf.errors.InputError` naming the first bad one."""
    if nnodes < 1:
        raise InputError(f"--nnodes {nnodes}: must be >= 1 (the number of machines)")
    if not 0 <= node_rank < nnodes:
        raise InputError(
            f"--node-rank {node_rank}: out of range for --nnodes {nnodes}; give 0 .. "
            f"{nnodes - 1} (0 on the machine at --master-addr; under SLURM: "
            "--node-rank $SLURM_NODEID)"
        )
    addr = None if master_addr is None else master_addr.strip()
    if addr is not None and (not addr or any(c.isspace() for c in addr)):
        raise InputError(
            f"--master-addr {master_addr!r}: not a host name or address; give node 0's "
            "address, e.g. --master-addr 10.0.0.1"
        )
    port = _port(master_port)
    if nnodes > 1 and addr is None:
        raise InputError(
            f"--nnodes {nnodes}: needs --master-addr, the address of node 0 that every node "
            "can reach (under SLURM: the first name of `scontrol show hostnames "
            "$SLURM_JOB_NODELIST`)"
        )
    if master_port is not None and addr is None:
        raise InputError(
            f"--master-port {port}: needs --master-addr (on one machine, leave both out: "
            "the launcher picks a free port)"
        )
    return Nodes(count=nnodes, rank=node_rank, master_addr=addr, master_port=port)
