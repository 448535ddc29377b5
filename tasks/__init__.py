"""Task registry: one line per task; the key is also the name of `conf/task/<key>.yaml` and `tests/tasks/test_<key>.py`."""
from sparsebench.registry import Registry

TASKS = Registry("task", {
    "longbench": "sparsebench.tasks.longbench:LongBench",
    "longbench_v2": "sparsebench.tasks.longbench:LongBenchV2",
    "niah": "sparsebench.tasks.niah:NIAH",
    "ruler": "sparsebench.tasks.ruler:Ruler",
})
