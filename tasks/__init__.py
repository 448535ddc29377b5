"""Task registry: one line per task; the key is also the name of `conf/task/<key>.yaml` and `tests/tasks/test_<key>.py`."""
from sparsebench.registry import Registry

TASKS = Registry("task", {
    "longbench": "sparsebench.tasks.longbench:LongBench",
    "longbench_v2": "sparsebench.tasks.longbench:LongBenchV2",
    "joint_recall": "sparsebench.tasks.joint_recall:JointRecall",
    "lm_eval": "sparsebench.tasks.lm_eval_bridge:LMEval",
    "mqar": "sparsebench.tasks.joint_recall:MQAR",
    "niah": "sparsebench.tasks.niah:NIAH",
    "ruler": "sparsebench.tasks.ruler:Ruler",
    "story": "sparsebench.tasks.story:Story",
})
