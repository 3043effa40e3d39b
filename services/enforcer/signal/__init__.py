"""The eBPF signal enforcer: tracepoint programs that SIGKILL a selected workload's process on a Block rule."""
