"""radixlm's benchmarks, installed as `radixlm.bench` (this folder, mapped in pyproject.toml).

`radixlm bench` runs the suite (suite.py): the SGLang paper's workloads (workloads/) on radixlm
and its peers (systems.py), reported by report.py. The single-topic benches beside it
(shared_prefix.py, model_speed.py, ...) run as modules: `python -m radixlm.bench.<name>`.
"""

from radixlm.torch_env import apply_torch_defaults

apply_torch_defaults()  # the bench modules import torch after this package: radixlm's settings hold for them too
