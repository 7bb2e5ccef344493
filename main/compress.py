"""Alias kept for the public interface (``main.compress.parse_compress_rate``): the grammar lives in
``models.compress``, beside the architectures it sizes."""
from models.compress import CompressRateError, parse_compress_rate

__all__ = ["CompressRateError", "parse_compress_rate"]
