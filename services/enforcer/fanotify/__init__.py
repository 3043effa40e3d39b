"""The fanotify enforcer: permission events on the workloads' own mounts, answered by the matcher;
a holder keeps the group across restarts."""
