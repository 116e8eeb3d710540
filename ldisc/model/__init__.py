"""Model: VGG16-bn encoder, U-Net decoder, LD heads, shape-prior discriminator."""
from ldisc.model.checkpointing import CHECKPOINTING, set_activation_checkpointing
from ldisc.model.decoder import DECODERS, ClusterHead, EmbeddingHead, UNetDecoder, conv_head
from ldisc.model.discriminator import ShapeDiscriminator
from ldisc.model.encoder import VGGEncoder, encoder_channels
from ldisc.model.init import INITS, init_weights
from ldisc.model.header import EncoderHeader
from ldisc.model.ld import (LDNet, LDOutput, encoder_state, load_encoder, load_stage1, read_encoder_file,
                            save_encoder)

__all__ = ["CHECKPOINTING", "set_activation_checkpointing", "DECODERS", "INITS", "conv_head", "init_weights", "ClusterHead", "EmbeddingHead", "UNetDecoder",
           "ShapeDiscriminator", "VGGEncoder", "encoder_channels", "LDNet", "LDOutput", "encoder_state", "load_encoder",
           "load_stage1", "save_encoder", "read_encoder_file", "EncoderHeader"]
