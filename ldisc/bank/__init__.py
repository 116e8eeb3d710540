"""The distributed memory bank: a sharded FIFO of past patch vectors (extra NCE negatives), its
checkpointing with resharding, and an optional EMA key encoder that feeds it."""
from ldisc.bank.checkpoint import global_fifo, load_bank, save_bank
from ldisc.bank.layout import StridedLayout, shard_bytes
from ldisc.bank.memory_bank import ShardedMemoryBank

__all__ = ["ShardedMemoryBank", "StridedLayout", "global_fifo", "load_bank", "save_bank", "shard_bytes"]
