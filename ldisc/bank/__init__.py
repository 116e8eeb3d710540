"""The distributed memory bank: a sharded FIFO of past patch vectors (extra NCE negatives), its
checkpointing with resharding, and an optional EMA key encoder that feeds it."""
from ldisc.bank.build import build_bank, build_key_encoder, feed_bank
from ldisc.bank.checkpoint import load_bank, save_bank
from ldisc.bank.ema import EMAKeyEncoder
from ldisc.bank.layout import StridedLayout, shard_bytes
from ldisc.bank.memory_bank import ShardedMemoryBank

__all__ = ["EMAKeyEncoder", "ShardedMemoryBank", "StridedLayout", "build_bank", "build_key_encoder",
           "feed_bank", "load_bank", "save_bank", "shard_bytes"]
