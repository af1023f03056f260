"""Models: one encoder for BERT, RoBERTa and DistilBERT, and the task heads."""
from nanoft.models.encoder import Embeddings, Encoder, EncoderLayer, FeedForward, SelfAttention, count_parameters
from nanoft.models.heads import HEADS, ClassificationHead, MaskedLMHead, TokenClassificationHead
from nanoft.models.model import EncoderModel

__all__ = ["Embeddings", "Encoder", "EncoderLayer", "FeedForward", "SelfAttention", "EncoderModel",
           "ClassificationHead", "TokenClassificationHead", "MaskedLMHead", "HEADS", "count_parameters"]
