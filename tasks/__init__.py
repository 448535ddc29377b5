"""Task registry: one line per task; the key is also the name of `conf/task/<key>.yaml` and `tests/tasks/test_<key>.py`."""
from sparsebench.registry import Registry

TASKS = Registry("task", {
    "niah": "sparsebench.tasks.niah:NIAH",
})
