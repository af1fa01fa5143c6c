"""Dense retrieval: bi-encoders (``encoders``; fast paths in ``onnx``, ``quantize``, ``cpu``), FAISS index
choice (``index``) and the first stage (``searcher``).

Importing this package loads neither torch nor FAISS; they load when a model or an index is built.
"""
from retrieval.dense.encoders import BiEncoder, EncoderConfig, load_encoder
from retrieval.dense.searcher import DenseSearcher, IndexConfig

__all__ = ["BiEncoder", "DenseSearcher", "EncoderConfig", "IndexConfig", "load_encoder"]
