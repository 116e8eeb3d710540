"""Model: VGG16-bn encoder, U-Net decoder, LD heads, shape-prior discriminator."""
from ldisc.model.checkpointing import CHECKPOINTING, set_activation_checkpointing
from ldisc.model.decoder import DECODERS, ClusterHead, EmbeddingHead, UNetDecoder, conv_head
from ldisc.model.discriminator import ShapeDiscriminator
from ldisc.model.encoder import VGGEncoder, encoder_channels
from ldisc.model.init import INITS, init_weights
from ldisc.model.ld import LDNet, LDOutput, build_model, encoder_state, load_encoder, load_stage1, save_encoder

__all__ = ["CHECKPOINTING", "set_activation_checkpointing", "DECODERS", "INITS", "conv_head", "init_weights", "ClusterHead", "EmbeddingHead", "UNetDecoder",
           "ShapeDiscriminator", "VGGEncoder", "encoder_channels", "LDNet", "LDOutput", "build_model", "encoder_state", "load_encoder",
           "load_stage1", "save_encoder"]
