"""Method registry: one line per method; the key is also `conf/method/<key>.yaml` and `tests/methods/test_<key>.py`."""
from sparsebench.registry import Registry

METHODS = Registry("method", {
    "dense": "sparsebench.methods.dense:Dense",
    "flexprefill": "sparsebench.methods.flexprefill:FlexPrefill",
    "minference": "sparsebench.methods.minference:MInference",
    "pbs": "sparsebench.methods.pbs:PBS",
    "streaming": "sparsebench.methods.streaming:Streaming",
    "xattn": "sparsebench.methods.xattn:XAttention",
})
