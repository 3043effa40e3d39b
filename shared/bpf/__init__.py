"""The BPF toolchain every node service shares: BTF reading, the header tree bcc compiles against, path decoding."""
