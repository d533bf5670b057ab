"""The data layer: corpora in, memory-mapped token ids and a tokenizer out.

    data = load_token_data(cfg.data)   # TokenData(train, val, tokenizer, fingerprint, test)
    tok = tokenizer_from_json(s)       # the inverse of Tokenizer.to_json(), for checkpoints
"""

from ngt.data.loader import TokenData, load_token_data
from ngt.data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, tokenizer_from_json

__all__ = ["TokenData", "load_token_data", "Tokenizer", "CharTokenizer", "BPETokenizer", "tokenizer_from_json"]
