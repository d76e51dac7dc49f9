"""Model files: Hugging Face safetensors, orbax checkpoints, GGUF; `load` picks the reader."""

from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import save_checkpoint as save_checkpoint
from ._gguf import load_gguf as load_gguf
from ._hf import SUPPORTED as SUPPORTED
from ._hf import hf_config_to_jaxcirc as hf_config_to_jaxcirc
from ._hf import load_hf as load_hf
from ._load import load as load
from ._load import save as save
from ._tokenizer import load_tokenizer as load_tokenizer
