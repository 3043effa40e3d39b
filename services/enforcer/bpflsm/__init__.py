"""BPF-LSM enforcement: the probe (``probe``), RuleSet -> kernel tables (``rules``), writing them
(``maps``) and the enforcer that loads bpf/enforce/lsm.c (``enforcer``)."""
from services.enforcer.bpflsm.enforcer import HOOKS, BpfLsmEnforcer
from services.enforcer.bpflsm.probe import btf_func_id, probe_bpf_lsm, probe_lsm_source

__all__ = ["BpfLsmEnforcer", "HOOKS", "btf_func_id", "probe_bpf_lsm", "probe_lsm_source"]
