"""Ring-buffer records to RawEvent maps: the exec record, the other records, their kinds and syscall names."""
