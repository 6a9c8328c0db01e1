"""Wire format: messages, blobs and the frame codec (docs/architecture.md principle 3)."""

from .blob import EMPTY, Blob
from .codec import DEFAULT_MAX_FRAME_BYTES, FORMAT_VERSION, Decoder, Encoder, FrameBuffer
from .messages import Envelope, ErrorReply, Message, Reply, Request

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "EMPTY",
    "FORMAT_VERSION",
    "Blob",
    "Decoder",
    "Encoder",
    "Envelope",
    "ErrorReply",
    "FrameBuffer",
    "Message",
    "Reply",
    "Request",
]
